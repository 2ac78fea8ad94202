"""The ``mpsender`` command line: ``python -m mpsender COMMAND`` (or the ``mpsender`` script).

One module per command; each adds its parser and sets ``run(args) -> exit code``.
A problem the user can act on is a :class:`~._common.CliError`: one line on stderr,
a non-zero exit code, and a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from .._version import __version__
from . import _collect, _common, _demo, _spool, _status, _stop

__all__ = ["main"]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the command, neither copy overwrites the other
    common.add_argument("--runtime-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="where the senders live (default: $MPSENDER_RUNTIME_DIR, else <tmp>/mpsender-<uid>)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and mpsender's debug log")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="mpsender", parents=[common],
        description="See mpsender work, watch it while it runs, look inside when something is wrong.",
        epilog="Start with `mpsender demo`. Exit codes: 0 done, 1 failed or nothing there, 2 bad usage.",
    )
    parser.add_argument("--version", action="version", version=f"mpsender {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (_demo, _collect, _status, _spool, _stop):
        module.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.runtime_dir = getattr(args, "runtime_dir", None)
    args.debug = getattr(args, "debug", False)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return _common.EXIT_USAGE
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")  # a non-UTF-8 terminal gets '?' for '·', not a crash
    _setup_logging(args.debug)
    try:
        return int(args.run(args))
    except _common.CliError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"mpsender: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("mpsender: interrupted", file=sys.stderr)
        return _common.EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`mpsender spool show | head`): nothing left to say, and
        # nothing more to flush into the closed pipe at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _common.EXIT_OK
    except Exception as exc:
        if args.debug:
            raise
        print(f"mpsender: unexpected error: {type(exc).__name__}: {exc} (run again with --debug for the "
              "traceback)", file=sys.stderr)
        return _common.EXIT_FAILED


def _setup_logging(debug: bool) -> None:
    # The CLI is the application here: mpsender's warnings go to the terminal.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mpsender: %(levelname)s %(name)s: %(message)s" if debug
                                           else "mpsender: %(message)s"))
    log = logging.getLogger("mpsender")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
