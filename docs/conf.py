"""Sphinx configuration of jaxprune's documentation.

Build it with ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors). The
notebooks of ``colabs/`` are copied into ``docs/notebooks/`` and executed by myst-nb; the MNIST they
read is found as the experiments find it (``TFDS_DATA_DIR``, else ``../shared/tensorflow_datasets``
beside the checkout).
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))

import jaxprune  # noqa: E402

project = "jaxprune"
author = "The jaxprune authors"
copyright = "2026, the jaxprune authors"
version = release = jaxprune.__version__

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  "sphinx.ext.mathjax",
]

# The docstrings are Google style (Args / Returns / Raises / Example), as optax's.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autosummary_generate = True
autodoc_default_options = {"members": False, "show-inheritance": False}
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
# `name` in a docstring is code, as in markdown.
default_role = "code"
add_module_names = False

myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
html_theme = "sphinx_book_theme"
html_title = f"jaxprune {release}"
html_theme_options = {"show_toc_level": 2}

# The colabs, rendered and executed. They live in colabs/ (where Colab opens them); the build copies
# them here so that myst-nb finds them inside the source directory.
_NOTEBOOKS = DOCS / "notebooks"
_NOTEBOOKS.mkdir(exist_ok=True)
for _nb in sorted((REPO / "colabs").glob("*.ipynb")):
  shutil.copyfile(_nb, _NOTEBOOKS / _nb.name)

_shared = REPO.parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _shared.is_dir():
  os.environ["TFDS_DATA_DIR"] = str(_shared)
# JAXPRUNE_DOCS_EXECUTE=off renders the notebooks without running them (a quick local build).
nb_execution_mode = os.environ.get("JAXPRUNE_DOCS_EXECUTE", "cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
