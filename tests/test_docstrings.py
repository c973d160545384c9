"""Every docstring example of the library runs as written, with nothing imported beforehand."""

import doctest
import importlib
import pkgutil

import pytest

import jaxprune

MODULES = sorted(m.name for m in pkgutil.iter_modules(jaxprune.__path__, "jaxprune."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  for test in finder.find(module, name, globs={}):
    runner.run(test)
  assert runner.failures == 0, f"{runner.failures} failing docstring example(s) in {name}"
