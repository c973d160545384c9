"""jaxprune installs as a package: the wheel holds the library (typed) and nothing else, and the
README's quick start runs, as it prints, against the installed wheel in a fresh environment.

The wheel is built from a copy of the checkout's files (those git tracks or does not ignore), so
that build outputs never land in the checkout and stale ones cannot leak into the wheel. The fresh
virtual environment sees the third-party packages of this one through a ``.pth`` file listing this
environment's site-packages: the lines of a ``.pth`` file go on ``sys.path``, but ``.pth`` files
inside the directories they name are not processed, so this environment's editable install of
jaxprune (a ``.pth`` hook) stays out, which the test checks before installing the wheel.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import jaxprune

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(args, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
  return result


def _block_after(text: str, heading: str, lang: str) -> str:
  section = text[text.index(heading) :]
  return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _clean_env() -> dict[str, str]:
  """This process's environment without what would put the checkout's jaxprune on the path, and
  without the 8 simulated devices of conftest.py (the quick start runs as users run it)."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  flags = re.sub(
    r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
  ).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  env["PYTHONNOUSERSITE"] = "1"
  env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
  return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """The wheel built from the checkout (without build isolation: no network)."""
  root = tmp_path_factory.mktemp("package")
  source = root / "source"
  files = _run(
    "git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO
  ).stdout.split("\0")
  for name in filter(None, files):
    if (REPO / name).is_file():  # a deleted file still listed by the index is skipped
      (source / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(REPO / name, source / name)
  dist = root / "dist"
  _run(
    sys.executable,
    "-m",
    "build",
    "--wheel",
    "--no-isolation",
    "--outdir",
    str(dist),
    cwd=source,
    env=_clean_env(),
  )
  (built,) = dist.glob("jaxprune-*.whl")
  return built


def test_wheel_holds_the_library_typed_and_nothing_else(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  modules = {p.relative_to(REPO).as_posix() for p in (REPO / "jaxprune").rglob("*.py")}
  assert modules, "no modules found in jaxprune/"
  assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
  assert "jaxprune/py.typed" in names
  top = {name.split("/")[0] for name in names}
  dist_info = {t for t in top if t.endswith(".dist-info")}
  assert top - dist_info == {"jaxprune"}, f"the wheel holds more than jaxprune/: {sorted(top)}"
  for name in names:
    assert not name.startswith(("tests/", "experiments/", "benchmarks/", "colabs/", "docs/")), name


def test_wheel_version_is_the_package_version(wheel):
  (metadata,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
  fields = Parser().parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
  assert fields["Name"] == "jaxprune"
  assert fields["Version"] == jaxprune.__version__
  assert wheel.name.startswith(f"jaxprune-{jaxprune.__version__}-")


def test_quick_start_runs_from_the_installed_wheel(wheel, tmp_path):
  env = _clean_env()
  venv = tmp_path / "venv"
  _run(sys.executable, "-m", "venv", "--without-pip", str(venv), env=env)
  python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  purelib = _run(
    str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", env=env
  ).stdout.strip()
  here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  (Path(purelib) / "jaxprune_test_deps.pth").write_text("\n".join(sorted(here)) + "\n")

  # The dependencies are visible; this environment's editable jaxprune is not.
  probe = textwrap.dedent(
    """
    import importlib.util, sys
    import jax, optax
    print(importlib.util.find_spec("jaxprune") is None)
    print(any("editable" in getattr(f, "__name__", "").lower() for f in sys.meta_path))
    """
  )
  assert _run(str(python), "-s", "-c", probe, env=env, cwd=tmp_path).stdout.split() == [
    "True",
    "False",
  ]

  # pip runs from this environment against the fresh one (--python), which has no pip of its own;
  # --ignore-installed: the editable install's metadata on the .pth path is not this environment's.
  _run(
    sys.executable,
    "-m",
    "pip",
    "--python",
    str(python),
    "install",
    "--no-deps",
    "--no-index",
    "--ignore-installed",
    "--no-compile",
    str(wheel),
    env=env,
  )

  text = README.read_text()
  quick_start = _block_after(text, "## Quick start", "python")
  shown = _block_after(text, "It prints", "").strip()
  work = tmp_path / "work"  # outside the checkout: nothing of it on sys.path
  work.mkdir()
  epilogue = (
    "\nopen('installed.txt', 'w').write(jaxprune.__file__ + '\\n' + jaxprune.__version__)\n"
  )
  (work / "quick_start.py").write_text(quick_start + epilogue)
  result = _run(str(python), "-s", "quick_start.py", env=env, cwd=work)
  location, version = (work / "installed.txt").read_text().splitlines()
  assert Path(location).resolve().is_relative_to(venv.resolve()), location
  assert not Path(location).resolve().is_relative_to(REPO), location
  assert version == jaxprune.__version__
  assert result.stdout.strip() == shown
