"""The colabs run top to bottom (in their reduced "smoke" size) and print what they promise.

Each notebook is executed with nbclient in a Jupyter kernel running this interpreter
(``sys.executable``), with ``JAXPRUNE_COLAB_SMOKE=1`` and ``TFDS_DATA_DIR`` pointing to the prepared
offline MNIST in ``../shared/tensorflow_datasets``.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import ipykernel  # noqa: F401  (the kernel the notebooks run in)
import nbclient
import nbformat
import pytest
from shared_data import DATA_DIR, require_mnist

REPO = Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"

KERNEL_NAME = "jaxprune-colab-test"


def _install_kernelspec(root: Path) -> None:
  """A kernelspec that runs ipykernel with this very interpreter, found first via JUPYTER_PATH."""
  spec_dir = root / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  spec = {
    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": f"Python {sys.version_info.major}.{sys.version_info.minor} (tests)",
    "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """Environment the kernel inherits; returns the working directory for the notebook."""
  require_mnist()
  jupyter_dir = tmp_path / "jupyter"
  _install_kernelspec(jupyter_dir)
  monkeypatch.setenv(
    "JUPYTER_PATH",
    os.pathsep.join(
      [str(jupyter_dir)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    ),
  )
  monkeypatch.setenv("JAXPRUNE_COLAB_SMOKE", "1")
  monkeypatch.setenv("TFDS_DATA_DIR", str(DATA_DIR))
  # Import jaxprune from this checkout even where it is not installed.
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  # conftest.py simulates 8 CPU devices for this process; the notebooks run as in Colab, on one.
  flags = re.sub(
    r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
  ).strip()
  if flags:
    monkeypatch.setenv("XLA_FLAGS", flags)
  else:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
  workdir = tmp_path / "work"
  workdir.mkdir()
  return workdir


def _execute(name: str, workdir: Path):
  """Runs colabs/<name> and returns (notebook, stdout text of all cells, seconds)."""
  nb = nbformat.read(COLABS / name, as_version=4)
  client = nbclient.NotebookClient(
    nb,
    kernel_name=KERNEL_NAME,
    timeout=600,
    startup_timeout=120,
    resources={"metadata": {"path": str(workdir)}},
  )
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError (with the cell's traceback) if a cell fails
  seconds = time.perf_counter() - start
  errors = [
    out
    for cell in nb.cells
    if cell.cell_type == "code"
    for out in cell.get("outputs", [])
    if out.get("output_type") == "error"
  ]
  assert not errors, errors
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream" and out.get("name") == "stdout":
        text.append(out["text"])
      elif out.get("output_type") in ("execute_result", "display_data"):
        text.append(out.get("data", {}).get("text/plain", ""))
  print(f"{name}: executed in {seconds:.1f} s")
  return nb, "\n".join(text), seconds


def _has_image(nb) -> bool:
  return any(
    "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
  )


def test_kernelspec_runs_this_interpreter(tmp_path, monkeypatch):
  from jupyter_client.kernelspec import KernelSpecManager

  _install_kernelspec(tmp_path)
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
  spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
  assert spec.argv[0] == sys.executable


@pytest.mark.parametrize("name", ["quick_start.ipynb", "mnist_pruning.ipynb"])
def test_notebooks_are_clean(name):
  nb = nbformat.read(COLABS / name, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{name}: committed outputs"


def _sync_module():
  spec = importlib.util.spec_from_file_location("colabs_sync", COLABS / "sync.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", ["quick_start.ipynb", "mnist_pruning.ipynb"])
def test_install_cell_and_badge_follow_pyproject(name):
  # The repository address is named once, in pyproject.toml; colabs/sync.py writes it here.
  sync = _sync_module()
  address = sync.repository()
  nb = nbformat.read(COLABS / name, as_version=4)
  assert nb.cells[1].source == sync.install_cell(address), "run `python colabs/sync.py`"
  assert f"({sync.badge_url(address, name)})" in nb.cells[0].source
  assert json.loads((COLABS / name).read_text()) == sync.synced(COLABS / name, address)


def test_sync_reads_the_address_and_refuses_what_colab_cannot_open(tmp_path):
  sync = _sync_module()
  pyproject = tmp_path / "pyproject.toml"
  pyproject.write_text(
    '[project]\nname = "x"\n\n[project.urls]\nRepository = "https://github.com/a/b"\n'
  )
  assert sync.repository(pyproject) == "https://github.com/a/b"
  assert sync.badge_url("https://github.com/a/b.git", "n.ipynb") == (
    "https://colab.research.google.com/github/a/b/blob/main/colabs/n.ipynb"
  )
  with pytest.raises(ValueError, match="not a GitHub address"):
    sync.badge_url("https://gitlab.com/a/b", "n.ipynb")
  pyproject.write_text('[project]\nname = "x"\n')
  with pytest.raises(ValueError, match="no Repository address"):
    sync.repository(pyproject)


def _install_cell_scope(monkeypatch, importable: bool) -> dict:
  """Runs the install cell with jaxprune importable (it must do nothing), returns its namespace."""
  calls = []
  monkeypatch.setattr(subprocess, "run", _recording_run(calls))
  scope = {}
  exec(nbformat.read(COLABS / "quick_start.ipynb", as_version=4).cells[1].source, scope)
  assert not [c for c in calls if "pip" in c], "jaxprune is importable: the cell must not install"
  monkeypatch.undo()
  if not importable:
    real = importlib.util.find_spec
    monkeypatch.setattr(
      importlib.util, "find_spec", lambda n, *a: None if n == "jaxprune" else real(n, *a)
    )
  return scope


def _recording_run(calls):
  real = subprocess.run

  def run(args, *a, **k):
    calls.append(list(args))
    if "pip" in args:
      raise AssertionError(f"the test must not install anything: {args}")
    return real(args, *a, **k)

  return run


def test_install_cell_installs_the_checkout_it_sits_in(monkeypatch):
  scope = _install_cell_scope(monkeypatch, importable=False)
  monkeypatch.chdir(COLABS)
  assert scope["install_source"]() == str(REPO)


def test_install_cell_uses_the_repository_only_when_it_answers(monkeypatch, tmp_path):
  scope = _install_cell_scope(monkeypatch, importable=False)
  outside = tmp_path / "colab"
  outside.mkdir()
  monkeypatch.chdir(outside)
  # A repository that answers (a local bare repository stands in for the published one) ...
  published = tmp_path / "published.git"
  subprocess.run(["git", "init", "-q", "--bare", str(published)], check=True)
  scope["REPOSITORY"] = published.as_uri()
  assert scope["install_source"]() == f"jaxprune @ git+{published.as_uri()}"
  # ... and one that does not: a clear error naming it, not a failed pip install.
  scope["REPOSITORY"] = (tmp_path / "nowhere.git").as_uri()
  with pytest.raises(RuntimeError, match="nowhere.git.*does not answer"):
    scope["install_source"]()


def test_quick_start(kernel_env):
  nb, out, _ = _execute("quick_start.ipynb", kernel_env)
  assert "smoke test: True" in out
  # The sparsity summary: every kernel exactly 90% zeros, biases untouched.
  assert re.search(r"^Dense_0/kernel\s+235200\s+211680\s+0\.9000$", out, re.M), out
  assert re.search(r"^Dense_1/kernel\s+30000\s+27000\s+0\.9000$", out, re.M), out
  assert re.search(r"^Dense_2/kernel\s+1000\s+900\s+0\.9000$", out, re.M), out
  assert re.search(r"^Dense_0/bias\s+300\s+0\s+0\.0000$", out, re.M), out
  assert "all pruned weights are exactly 0.0" in out
  accuracy = float(re.search(r"90% sparse test accuracy:\s+([\d.]+)", out).group(1))
  assert accuracy > 0.5, out  # 4,000 examples, 300 steps: about 0.9
  assert _has_image(nb), "the mask plot is missing"


def test_mnist_pruning(kernel_env):
  nb, out, _ = _execute("mnist_pruning.ipynb", kernel_env)
  rows = re.findall(r"^(dense|layer-wise|global)\s+(\d\.\d+)\s+(\d\.\d+)\s+.*?([\d.]+)$", out, re.M)
  methods = {method for method, *_ in rows}
  assert methods == {"dense", "layer-wise", "global"}, out
  for method, target, kernel_sparsity, accuracy in rows:
    # Pruning is exact: the kernels together (and, layer-wise, each kernel) lose round(s * size).
    assert abs(float(kernel_sparsity) - float(target)) < 1e-4, (method, target, kernel_sparsity)
    assert 0.0 <= float(accuracy) <= 1.0
  assert len([r for r in rows if r[0] != "dense"]) >= 4, out
  assert _has_image(nb), "the accuracy-vs-sparsity plot is missing"
