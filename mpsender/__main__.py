"""``python -m mpsender``: the command line (see ``mpsender --help`` and docs/cli.md)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``mpsender`` command line; returns the exit code."""
    from ._cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
