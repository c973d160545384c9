"""Writes the repository address of pyproject.toml into the notebooks of this folder.

The address is named once, as ``[project.urls] Repository`` in ``pyproject.toml``. Each notebook's
first code cell (the install cell) and its "Open in Colab" badge are generated from it here; run
``python colabs/sync.py`` after changing the address, and ``tests/test_colabs.py`` checks that the
notebooks agree with it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

COLABS = Path(__file__).resolve().parent
REPO = COLABS.parent

INSTALL_CELL = '''\
# Installs jaxprune where this notebook runs: nothing if it is importable; else the checkout this
# notebook sits in; else REPOSITORY, the address in pyproject.toml ([project.urls] Repository,
# written here by colabs/sync.py), after checking that it answers.
import importlib.util
import subprocess
import sys
from pathlib import Path

REPOSITORY = "{repository}"


def install_source():
  """What pip installs jaxprune from, or None when it is already importable."""
  if importlib.util.find_spec("jaxprune") is not None:
    return None
  for folder in [Path.cwd(), *Path.cwd().parents]:
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file() and 'name = "jaxprune"' in pyproject.read_text():
      return str(folder)
  answer = subprocess.run(["git", "ls-remote", REPOSITORY, "HEAD"], capture_output=True, text=True)
  if answer.returncode != 0:
    raise RuntimeError(
      f"jaxprune is not installed, this notebook is not inside a checkout of it, and {{REPOSITORY}} "
      f"does not answer ({{answer.stderr.strip()}}). Install jaxprune first (for example upload a "
      "wheel built with `python -m build` and pip install it), or set [project.urls] Repository in "
      "pyproject.toml to your published copy and run `python colabs/sync.py`."
    )
  return f"jaxprune @ git+{{REPOSITORY}}"


source = install_source()
if source is not None:
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)
print("jaxprune:", "already installed" if source is None else f"installed from {{source}}")'''

BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]*")


def repository(pyproject: Path = REPO / "pyproject.toml") -> str:
  """The ``[project.urls] Repository`` address of ``pyproject``."""
  text = pyproject.read_text()
  urls = re.search(r"^\[project\.urls\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)
  found = urls and re.search(r'^Repository\s*=\s*"([^"]+)"', urls.group(1), re.M)
  if not found:
    raise ValueError(f"{pyproject}: no Repository address under [project.urls].")
  return found.group(1)


def badge_url(repository: str, notebook: str) -> str:
  """The Colab address that opens ``colabs/<notebook>`` of a GitHub repository."""
  match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?", repository)
  if not match:
    raise ValueError(f"Colab opens notebooks from GitHub; {repository!r} is not a GitHub address.")
  owner, name = match.groups()
  return f"https://colab.research.google.com/github/{owner}/{name}/blob/main/colabs/{notebook}"


def install_cell(repository: str) -> str:
  return INSTALL_CELL.format(repository=repository)


def synced(notebook: Path, address: str) -> dict:
  """The notebook's JSON with the install cell and the badge written from ``address``."""
  nb = json.loads(notebook.read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  code[0]["source"] = install_cell(address).splitlines(keepends=True)
  for cell in nb["cells"]:
    if cell["cell_type"] == "markdown":
      text = "".join(cell["source"])
      new = BADGE.sub(badge_url(address, notebook.name), text)
      cell["source"] = new.splitlines(keepends=True)
  return nb


def main() -> int:
  address = repository()
  for notebook in sorted(COLABS.glob("*.ipynb")):
    text = json.dumps(synced(notebook, address), indent=1, ensure_ascii=False) + "\n"
    if text != notebook.read_text():
      notebook.write_text(text)
      print(f"updated {notebook.relative_to(REPO)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
