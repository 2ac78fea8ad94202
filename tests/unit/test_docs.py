"""The README and docs/ stay in step with the code, and with each other."""

import dataclasses
import re
from pathlib import Path

import pytest

from mpsender._options import _ENV_PARSERS, Options

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: a markdown link or image target: [text](target), not inside a code span
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def test_every_option_is_in_the_configuration_table() -> None:
    """Each option has a row in docs/configuration.md's table, with its environment variable."""
    table = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M)}
    for field in dataclasses.fields(Options):
        assert field.name in rows, f"{field.name} missing from docs/configuration.md's table"
        expected = f"`MPSENDER_{field.name.upper()}`" if field.name in _ENV_PARSERS else "—"
        assert rows[field.name].strip() == expected, field.name
    names = {field.name for field in dataclasses.fields(Options)}
    assert set(rows) <= names, f"rows for options that do not exist: {set(rows) - names}"


def test_readme_starts_with_the_two_commands() -> None:
    """The first code block holds the install-and-demo and install-and-test commands."""
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install -e . && python -m mpsender demo" in first_block
    assert "pip install -e '.[test]' && pytest" in first_block


def test_readme_is_short() -> None:
    """README.md is what a new user needs: at most 15,000 bytes; reference goes in docs/."""
    size = len(README.encode())
    assert size <= 15_000, f"README.md is {size} bytes; move reference to docs/"


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    """Every relative link in README.md and docs/*.md names a file or directory that exists."""
    broken = []
    for target in _LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_the_link_check_sees_links() -> None:
    """The link pattern finds the README's links to docs/ (so the check above can fail)."""
    targets = _LINK.findall(_prose(README))
    assert "docs/configuration.md" in targets and "docs/architecture.md" in targets


def test_the_removed_journal_option_is_not_documented() -> None:
    """`journal` was removed from the product: no user doc offers it."""
    for page in [ROOT / "README.md", *DOCS]:
        assert not re.search(r"\bjournal\b", page.read_text()), page.name
