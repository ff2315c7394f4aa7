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


def _public_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") or not (callable(member) or isinstance(member, property | classmethod | staticmethod)):
            continue
        yield name, getattr(member, "fget", None) or getattr(member, "__func__", None) or member


def test_public_methods_are_documented():
    """Every public method and property of a public class says what it does (a newcomer reads `help()`)."""
    missing = []
    for name in zlab.__all__:
        value = getattr(zlab, name)
        if not isinstance(value, type):
            continue
        for method, function in _public_methods(value):
            if not (getattr(function, "__doc__", None) or "").strip():
                missing.append(f"zlab.{name}.{method}")
    assert not missing, f"document these: {missing}"


def test_the_public_names_are_exactly_all():
    """`dir(zlab)` shows what `__all__` promises, and every promised name is importable from `zlab`."""
    assert sorted(set(zlab.__all__)) == sorted(zlab.__all__), "__all__ names a thing twice"
    namespace: dict[str, object] = {}
    exec("from zlab import *", namespace)
    assert set(zlab.__all__) <= set(namespace)
