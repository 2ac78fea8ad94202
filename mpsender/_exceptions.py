"""Exceptions raised by mpsender.

Everything mpsender raises on purpose derives from :class:`MpsenderError`, and also
from the builtin a caller would naturally catch (``ValueError``, ``TypeError``)::

    MpsenderError
     ├── ConfigurationError        (ValueError)  bad option, unusable directory
     ├── InvalidEventError         (ValueError)  bad call: empty name, missing id, bad timestamp
     │    └── EventTooLargeError                 packed event over the message limit
     ├── UnserializableError       (TypeError)   a value that cannot be sent, by key path: wrong
     │                                           type, lone surrogate, circular or too deep,
     │                                           two keys that become one JSON key
     ├── EventTypeError            (TypeError)   wrong type for a field (event name, ids)
     └── NotInitializedError       (RuntimeError) a module-level call before init()

Delivery never raises: a failing endpoint, a dead sender or a full disk are counted
and logged, never thrown into the application.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EventTooLargeError",
    "EventTypeError",
    "InvalidEventError",
    "MpsenderError",
    "NotInitializedError",
    "UnserializableError",
]


class MpsenderError(Exception):
    """Base class of every error mpsender raises on purpose."""


class ConfigurationError(MpsenderError, ValueError):
    """An option has a bad value, or a directory mpsender needs cannot be used."""


class InvalidEventError(MpsenderError, ValueError):
    """The call itself is wrong: an empty event name, no user id, and so on."""


class EventTooLargeError(InvalidEventError):
    """The event, packed or as its wire JSON, is larger than ``max_message_bytes``."""

    def __init__(self, size: int, limit: int, form: str = "packed") -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"event is {size} bytes {form}, over the limit of {limit} bytes "
            "(max_message_bytes); trim its properties"
        )


class UnserializableError(MpsenderError, TypeError):
    """A value in the event cannot be carried; ``path`` names where it is.

    ``reason`` says why when it is not the value's type (a lone surrogate, a cycle,
    depth, colliding keys); without it the message is about the type or the integer.
    """

    def __init__(self, path: str, value: object, reason: str | None = None) -> None:
        self.path = path
        if reason is None and isinstance(value, int):
            reason = f"integer {value} is out of the 64-bit range"
        elif reason is None:
            reason = (
                f"value of type {type(value).__qualname__} cannot be sent; convert it to str, "
                "int, float, bool, None, list or dict (datetime, date, Decimal, UUID, set, "
                "tuple and Enum are converted for you)"
            )
        shown = path if len(path) <= 200 else f"{path[:90]} ... {path[-90:]}"  # a path 250 levels deep
        super().__init__(f"{shown}: {reason}")


class EventTypeError(MpsenderError, TypeError):
    """A field has the wrong type (for example a non-string event name)."""


class NotInitializedError(MpsenderError, RuntimeError):
    """A module-level call was made before ``mpsender.init()``."""
