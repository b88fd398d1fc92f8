"""The ``Examples:`` in the public docstrings run, and show what they print.

These docstrings are what the API reference pages render, so an example that no longer
matches the code is a documentation bug. Every public name of the public modules is
searched, methods and properties included (their functions live in private modules, which
``doctest.testmod`` on the public module would skip).
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import pytest

PUBLIC_MODULES = ["datarax.core.metadata"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name, module=False, globs={}):
            found[test.name] = test
        for public in module.__all__:
            obj = getattr(module, public)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue  # a constant: its "docstring" would be its type's (int's examples)
            # module=False: also search objects defined in the private modules.
            for test in finder.find(obj, f"{name}.{public}", module=False, globs={}):
                found[test.name] = test
    return [test for _, test in sorted(found.items()) if test.examples]


EXAMPLES = _examples()


def test_examples_found() -> None:
    assert len(EXAMPLES) >= 5, [t.name for t in EXAMPLES]


@pytest.mark.parametrize("test", EXAMPLES, ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    output: list[str] = []
    runner.run(test, out=output.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(output)
