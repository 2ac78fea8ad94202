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
