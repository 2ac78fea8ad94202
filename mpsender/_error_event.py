"""The ``$error`` event of ``capture_error()``: type, message, a bounded stack and a stable
fingerprint, built so that nothing about the exception can make it raise.

``capture_error()`` is called inside an ``except`` block: whatever the exception holds (a
``__str__`` that raises, text that is not UTF-8, an odd traceback), the app's own
exception must stay the one being handled, so every piece here falls back to a
placeholder rather than raising.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import sysconfig
import traceback
from types import TracebackType
from typing import Any

from ._exceptions import EventTypeError

__all__ = ["MAX_CAUSES", "MAX_STACK_FRAMES", "SEVERITIES", "error_properties", "error_type_name", "message_shape"]

#: frames kept in an error event's stack (innermost last, as Python prints them)
MAX_STACK_FRAMES = 30
#: links kept in an error event's ``causes`` (the exception's cause, its cause's cause ...)
MAX_CAUSES = 10
#: the ``severity`` values ``capture_error()`` takes, least severe first
SEVERITIES = ("debug", "info", "warning", "error", "fatal")
_MAX_MESSAGE = 1000
_SHAPE = re.compile(
    r"""0x[0-9a-fA-F]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"""
    r"""|'[^']*'|"[^"]*"|\d+(?:\.\d+)?"""
)
_LIBRARY_DIRS = tuple(
    {os.path.realpath(p) for p in (sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")) if p}
)


def message_shape(message: str) -> str:
    """The message with numbers, hex, UUIDs and quoted strings replaced: stable across occurrences."""
    return _SHAPE.sub("<*>", message)[:200]


def _in_app(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    try:
        real = os.path.realpath(filename)
    except (OSError, ValueError):  # a NUL byte, a name the file system refuses
        return False
    return not any(real.startswith(d + os.sep) for d in _LIBRARY_DIRS) and "site-packages" not in real


def error_properties(exc: BaseException) -> dict[str, Any]:
    """The properties of a ``$error`` event: type, message, bounded stack, fingerprint,
    and ``causes``, the chain that led to it (see :func:`_causes`).

    Raises only when ``exc`` is not an exception: whatever the exception does (a
    ``__str__`` that raises, text that is not UTF-8, an odd ``__traceback__``, a chain
    that loops), this gives properties that can be sent, with ``<unprintable ...>`` for
    what could not be read. It runs in an ``except`` block of the application and must
    not replace the exception being handled there.
    """
    if not isinstance(exc, BaseException):
        raise EventTypeError(f"capture_error() takes an exception, not {type(exc).__qualname__}")
    type_name, message, stack, fingerprint, anchor_text = _describe(exc)
    try:
        causes = _causes(exc)
    except Exception:  # noqa: BLE001 - an exception whose chain cannot be walked: the event without it
        causes = []
    return {
        "error_type": type_name,
        "error_message": message,
        "stack": stack,
        "fingerprint": fingerprint,
        "in_app_frame": anchor_text,
        "causes": causes,
    }


def _describe(exc: BaseException) -> tuple[str, str, list[dict[str, Any]], str, str]:
    """(type name, message, stack, fingerprint, anchor frame) of one exception; never raises."""
    try:
        type_name = error_type_name(type(exc))
    except Exception:  # noqa: BLE001 - a metaclass with odd names
        type_name = "<unknown type>"
    try:
        message = _text(str(exc)[:_MAX_MESSAGE])
    except Exception:  # noqa: BLE001 - a broken __str__ is the app's bug, not a reason to lose the event
        message = f"<unprintable {type_name}>"
    try:
        stack = _stack(exc.__traceback__)
    except Exception:  # noqa: BLE001 - an odd __traceback__: the event without a stack
        stack = []
    anchor = next((f for f in reversed(stack) if f["in_app"]), stack[-1] if stack else None)
    try:
        anchor_text = _text(f"{_module_of(str(anchor['filename']))}:{anchor['function']}") if anchor else ""
    except Exception:  # noqa: BLE001 - an odd sys.path entry: fingerprint without the frame
        anchor_text = ""
    fingerprint = hashlib.sha1(
        f"{type_name}\0{message_shape(message)}\0{anchor_text}".encode(), usedforsecurity=False
    ).hexdigest()[:16]
    return type_name, message, stack, fingerprint, anchor_text


def _causes(exc: BaseException) -> list[dict[str, Any]]:
    """The exceptions behind ``exc``, nearest first, as Python's traceback shows them:
    ``__cause__`` (``raise ... from``), else ``__context__`` (raised while handling)
    unless ``__suppress_context__`` (``from None``). At most MAX_CAUSES links; a chain
    that loops back stops at the first exception seen twice."""
    links: list[dict[str, Any]] = []
    seen = {id(exc)}
    current = exc
    while len(links) < MAX_CAUSES:
        cause = getattr(current, "__cause__", None)
        relation = "cause"
        if cause is None and not getattr(current, "__suppress_context__", False):
            cause = getattr(current, "__context__", None)
            relation = "context"
        if not isinstance(cause, BaseException) or id(cause) in seen:
            break
        seen.add(id(cause))
        type_name, message, _, fingerprint, _ = _describe(cause)
        links.append({"type": type_name, "message": message, "fingerprint": fingerprint, "relation": relation})
        current = cause
    return links


def error_type_name(etype: type[BaseException]) -> str:
    """How an event names an exception's class: ``ValueError`` for a builtin, the module and
    qualified name otherwise (``myapp.billing.PaymentDeclined``)."""
    return _text(etype.__qualname__ if etype.__module__ == "builtins" else f"{etype.__module__}.{etype.__qualname__}")


def _stack(tb: TracebackType | None) -> list[dict[str, Any]]:
    frames = traceback.extract_tb(tb, limit=-MAX_STACK_FRAMES) if tb is not None else []
    return [
        {"filename": _text(f.filename), "lineno": f.lineno, "function": _text(f.name), "in_app": _in_app(f.filename)}
        for f in frames
    ]


def _text(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (a file name in a foreign encoding,
    bytes decoded with surrogateescape) becomes its escape, ``\\udcff``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _module_of(filename: str) -> str:
    """A path-independent name for a file: the module name where sys.path knows it."""
    real = os.path.realpath(filename)
    best = ""
    for entry in sys.path:
        root = os.path.realpath(entry or os.getcwd())
        if real.startswith(root + os.sep) and len(root) > len(best):
            best = root
    rel = os.path.relpath(real, best) if best else os.path.basename(real)
    return rel[:-3].replace(os.sep, ".") if rel.endswith(".py") else rel


