"""Every Python example in README.md and docs/ runs, and prints what the page says it prints.

A page's ```python blocks run in order in one namespace (a page reads like one program). A block
whose next fenced block has no language, with only a short sentence about printing in between
("It prints", "prints the sparsity of every layer ..."), must print exactly that block.
"""

import re
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
PAGES = [p for p in PAGES if "_build" not in p.parts and "_autosummary" not in p.parts]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def examples(text: str) -> list[tuple[str, str | None]]:
  """The page's python blocks, each with the output it promises (or None)."""
  blocks = [(m.group(1).strip(), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
  found = []
  for i, (lang, code, _, end) in enumerate(blocks):
    if lang != "python":
      continue
    shown = None
    if i + 1 < len(blocks) and blocks[i + 1][0] == "":
      between = text[end : blocks[i + 1][2]].strip()
      if len(between) < 200 and "prints" in between:
        shown = blocks[i + 1][1]
    found.append((code, shown))
  return found


def _pages_with_code():
  return [p for p in PAGES if examples(p.read_text())]


def test_the_docs_have_examples():
  names = {p.relative_to(REPO).as_posix() for p in _pages_with_code()}
  assert {"README.md", "docs/getting_started.md", "docs/guides/writing_a_method.md"} <= names


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_page_examples_run_and_print_what_they_show(page, capsys):
  scope = {"__name__": "__docs__"}
  for n, (code, shown) in enumerate(examples(page.read_text())):
    capsys.readouterr()
    # The tests raise on implicit rank promotion (conftest.py); users' code, as the docs show it,
    # broadcasts biases as numpy does.
    with jax.numpy_rank_promotion("allow"):
      exec(compile(code, f"{page.name} example {n}", "exec"), scope)
    printed = capsys.readouterr().out
    if shown is not None:
      assert printed.strip() == shown.strip(), f"{page.name} example {n}"


def test_api_reference_lists_every_public_name():
  # Every name a module exports (its __all__) is in docs/api/, under its module's path or, for the
  # names jaxprune re-exports at the top level, under that shorter path.
  import importlib
  import pkgutil

  import jaxprune

  listed = set()
  for page in (REPO / "docs" / "api").glob("*.md"):
    text = page.read_text()
    listed |= set(re.findall(r"^\s+(jaxprune\.[\w.]+)$", text, re.M))
    listed |= set(re.findall(r"^\.\. auto\w+:: (jaxprune\.[\w.]+)$", text, re.M))
  missing = []
  for info in pkgutil.iter_modules(jaxprune.__path__):
    module = importlib.import_module(f"jaxprune.{info.name}")
    for name in getattr(module, "__all__", []):
      obj = getattr(module, name)
      if isinstance(obj, type(jaxprune)):
        continue  # a submodule: its own names are checked
      top = getattr(jaxprune, name, None) is obj and name in jaxprune.__all__
      if f"jaxprune.{info.name}.{name}" not in listed and not (
        top and f"jaxprune.{name}" in listed
      ):
        missing.append(f"jaxprune.{info.name}.{name}")
  for name in jaxprune.__all__:
    obj = getattr(jaxprune, name)
    if not isinstance(obj, type(jaxprune)) and f"jaxprune.{name}" not in listed:
      missing.append(f"jaxprune.{name}")
  assert not missing, f"not in docs/api/: {sorted(set(missing))}"
