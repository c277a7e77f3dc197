"""Every example in the package's docstrings runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest
import torch

import sparse_lottery as sl

MODULES = [
    m.name
    for m in pkgutil.walk_packages(sl.__path__, "sparse_lottery.")
    if not m.name.endswith("__main__")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"sl": sl, "sparse_lottery": sl, "torch": torch},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=False,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_public_api_is_documented():
    missing = [n for n in sl.__all__ if not (getattr(sl, n).__doc__ or "").strip()]
    missing += [n for n in sl.ops.__all__ if not (getattr(sl.ops, n).__doc__ or "").strip()]
    from sparse_lottery import lottery

    for name in lottery.__all__:
        obj = getattr(lottery, name)
        if not callable(obj):
            continue
        members = [(name, obj)] + [
            (f"{name}.{m}", f) for m, f in vars(obj).items() if callable(f) and m[0] != "_"
        ] * isinstance(obj, type)
        missing += [n for n, f in members if not (f.__doc__ or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"
