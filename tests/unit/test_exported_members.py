"""The public surface: __all__ and the module's public names stay in step."""

import mpsender


def test_all_is_sorted_and_matches_public_names() -> None:
    """Every public name (submodules aside) is in __all__, every name in it exists, sorted."""
    import types

    public = {name for name in dir(mpsender)
              if not name.startswith("_") and not isinstance(getattr(mpsender, name), types.ModuleType)}
    assert set(mpsender.__all__) - {"__version__"} == public
    assert mpsender.__all__ == sorted(mpsender.__all__)
    for name in mpsender.__all__:
        assert hasattr(mpsender, name), name


def test_import_starts_nothing() -> None:
    """Importing mpsender starts no thread and no process."""
    import subprocess
    import sys

    code = (
        "import threading, os, psutil; import mpsender; "
        "assert threading.active_count() == 1, threading.enumerate(); "
        "assert not psutil.Process().children(), psutil.Process().children(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_module_functions_have_the_client_methods_signatures() -> None:
    """mpsender.track() and friends take exactly what Client's methods take, so editors
    and type checkers check a user's call (they once took **kwargs: Any)."""
    import inspect

    for name in ("track", "identify", "group", "alias", "page", "screen", "capture_error"):
        function, method = getattr(mpsender, name), getattr(mpsender.Client, name)
        params = list(inspect.signature(method).parameters.values())[1:]  # less self
        assert list(inspect.signature(function).parameters.values()) == params, name
        assert function.__doc__ == method.__doc__ and function.__name__ == name


def test_a_wrong_call_is_a_type_error_for_mypy(tmp_path) -> None:
    """mypy --strict finds a misspelt keyword and a wrong type in a call of mpsender.track()."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("mypy", reason="mypy is in the lint extra")
    script = tmp_path / "user_code.py"
    script.write_text(
        "import mpsender\n"
        "mpsender.track('Signup', user_id='u', propertys={'plan': 'pro'})\n"
        "mpsender.track('Signup', user_id='u', properties=['not', 'a', 'dict'])\n"
        "mpsender.track('Signup', user_id='u', properties={'plan': 'pro'})\n"
    )
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
                         capture_output=True, text=True, timeout=300)
    assert 'Unexpected keyword argument "propertys"' in out.stdout, out.stdout
    assert 'incompatible type "list[str]"' in out.stdout, out.stdout
    assert "user_code.py:4" not in out.stdout, out.stdout
