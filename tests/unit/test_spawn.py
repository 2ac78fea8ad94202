"""Which interpreter runs the sender: the Python whose packages the app imports.

Each test lays out fake installations (executable files) under ``tmp_path`` and gives
``choose_python`` the ``sys`` values of a process, as uWSGI or a plain interpreter sets
them; PATH is set by the test, so nothing depends on the machine's own Pythons.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsender._options import Options
from mpsender._spawn import choose_python, find_python

VERSION = (3, 11)


def exe(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def trees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A base installation, a virtualenv made from it, and an empty PATH."""
    base, venv, path = tmp_path / "base", tmp_path / "venv", tmp_path / "path"
    for name in ("python3.11", "python3"):
        exe(base / "bin" / name)
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return {"base": base, "venv": venv, "path": path}


def test_uwsgi_in_a_virtualenv_gets_the_virtualenvs_python(trees: dict[str, Path]) -> None:
    """Under uWSGI in a virtualenv (sys.executable is the uwsgi binary, _base_executable the
    base Python that lacks the virtualenv's packages) the virtualenv's own python is chosen."""
    base, venv = trees["base"], trees["venv"]
    uwsgi = exe(venv / "bin" / "uwsgi")
    want = exe(venv / "bin" / "python3.11")
    got = choose_python(executable=uwsgi, prefix=str(venv), base_prefix=str(base), exec_prefix=str(venv),
                        base_executable=str(base / "bin" / "python3"), version=VERSION)
    assert got == want


def test_a_virtualenv_with_only_python3_still_wins_over_the_base(trees: dict[str, Path]) -> None:
    """A virtualenv without a pythonX.Y link: its python3 is taken, not the base's python3.11."""
    base, venv = trees["base"], trees["venv"]
    want = exe(venv / "bin" / "python3")
    got = choose_python(executable=exe(venv / "bin" / "uwsgi"), prefix=str(venv), base_prefix=str(base),
                        exec_prefix=str(venv), base_executable=str(base / "bin" / "python3"), version=VERSION)
    assert got == want


def test_a_real_python_executable_is_used_as_it_is(trees: dict[str, Path]) -> None:
    """A process started as python (in a virtualenv or not) runs the sender with that same file."""
    base, venv = trees["base"], trees["venv"]
    mine = exe(venv / "bin" / "python")
    exe(venv / "bin" / "python3.11")
    got = choose_python(executable=mine, prefix=str(venv), base_prefix=str(base), exec_prefix=str(venv),
                        base_executable=str(base / "bin" / "python3"), version=VERSION)
    assert got == mine


def test_uwsgi_without_a_virtualenv_gets_the_installations_python(trees: dict[str, Path]) -> None:
    """Outside a virtualenv, an embedding server's process gets its installation's pythonX.Y."""
    base = trees["base"]
    got = choose_python(executable=exe(trees["path"] / "uwsgi"), prefix=str(base), base_prefix=str(base),
                        exec_prefix=str(base), base_executable=str(trees["path"] / "uwsgi"), version=VERSION)
    assert got == str(base / "bin" / "python3.11")


def test_path_then_the_base_python_are_the_last_resorts(trees: dict[str, Path]) -> None:
    """A virtualenv with no python of its own: python3.11 on PATH, and only without one the
    base installation's."""
    base, venv = trees["base"], trees["venv"]
    kwargs = dict(executable=exe(venv / "bin" / "uwsgi"), prefix=str(venv), base_prefix=str(base),
                  exec_prefix=str(venv), base_executable=str(base / "bin" / "python3"), version=VERSION)
    assert choose_python(**kwargs) == str(base / "bin" / "python3")  # type: ignore[arg-type]
    on_path = exe(trees["path"] / "python3.11")
    assert choose_python(**kwargs) == on_path  # type: ignore[arg-type]


def test_nothing_found_is_none_and_find_python_names_the_option(
        trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """No interpreter anywhere: None, and find_python raises naming MPSENDER_PYTHON."""
    empty = trees["venv"]
    assert choose_python(executable=str(empty / "uwsgi"), prefix=str(empty), base_prefix=str(empty),
                         exec_prefix=str(empty), base_executable="", version=VERSION) is None
    monkeypatch.setattr("sys.executable", str(empty / "uwsgi"))
    monkeypatch.setattr("sys.prefix", str(empty))
    monkeypatch.setattr("sys.exec_prefix", str(empty))
    monkeypatch.setattr("sys.base_prefix", str(empty))
    monkeypatch.setattr("sys._base_executable", "", raising=False)
    with pytest.raises(FileNotFoundError, match="MPSENDER_PYTHON"):
        find_python(Options(write_key="k", endpoint="http://127.0.0.1:1"))


def test_the_python_option_is_taken_verbatim() -> None:
    """The python option (MPSENDER_PYTHON) is used as given, unchecked: a bad one is reported
    when the sender fails to start."""
    options = Options(write_key="k", endpoint="http://127.0.0.1:1", python="/opt/py/bin/python3")
    assert find_python(options) == "/opt/py/bin/python3"
