"""The public surface: every name in __all__ resolves, has a docstring, and `import zlab` stays light."""

import subprocess
import sys

import zlab


def test_all_names_resolve_and_are_documented():
    for name in zlab.__all__:
        value = getattr(zlab, name)
        assert value.__doc__ and value.__doc__.strip(), f"zlab.{name} has no docstring"


def test_import_is_light():
    heavy = "('pandas', 'matplotlib', 'papermill', 'ipywidgets', 'httpx')"
    code = f"import sys, zlab; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_contract_names_exist():
    for name in ("Client", "AsyncClient", "Request", "LoRA", "Sweep", "contact_sheet", "LocalServer", "ZlabError"):
        assert name in zlab.__all__
    assert callable(zlab.Sweep.from_file) and hasattr(zlab.Client, "run") and hasattr(zlab.Client, "generate")
