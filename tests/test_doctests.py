"""Every docstring example in the library runs and shows its real output."""

import doctest
import importlib
import pkgutil

import pytest

import datarax

MODULES = sorted(info.name for info in pkgutil.walk_packages(datarax.__path__, "datarax."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    # Objects re-exported with __module__ set to their public module are found there once.
    tests = doctest.DocTestFinder().find(module)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
