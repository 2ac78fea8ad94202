"""The README stays in step with the code."""

import dataclasses
import re
from pathlib import Path

from mpsender._options import _ENV_PARSERS, Options

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_option_is_in_the_readme_table() -> None:
    """Each option has a row in the configuration table, with its environment variable."""
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M)}
    for field in dataclasses.fields(Options):
        assert field.name in rows, f"{field.name} missing from the README's configuration table"
        expected = f"`MPSENDER_{field.name.upper()}`" if field.name in _ENV_PARSERS else "—"
        assert rows[field.name].strip() == expected, field.name


def test_readme_starts_with_the_two_commands() -> None:
    """The first code block holds the install-and-demo and install-and-test commands."""
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install -e . && python -m mpsender demo" in first_block
    assert "pip install -e '.[test]' && pytest" in first_block
