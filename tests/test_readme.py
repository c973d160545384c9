"""The README's quick start is real: run it and check what it says it prints."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_after(heading: str, lang: str) -> str:
  text = README.read_text()
  section = text[text.index(heading) :]
  return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_quick_start_runs_and_prints_what_readme_shows(capsys):
  exec(compile(_block_after("## Quick start", "python"), "README quick start", "exec"), {})
  printed = capsys.readouterr().out.strip()
  shown = _block_after("It prints", "").strip()
  assert printed == shown


def test_iterative_pruning_example_continues_the_quick_start(capsys):
  scope = {}
  exec(compile(_block_after("## Quick start", "python"), "README quick start", "exec"), scope)
  capsys.readouterr()
  exec(
    compile(
      _block_after("### Iterative pruning and lottery tickets", "python"), "README imp", "exec"
    ),
    scope,
  )
  printed = capsys.readouterr().out.strip()
  shown = _block_after("prints the sparsity of every layer", "").strip()
  assert printed == shown


def test_engine_example_method_runs_and_prints_what_readme_shows(capsys):
  exec(
    compile(
      _block_after("## The engine: how a method is written", "python"), "README engine", "exec"
    ),
    {},
  )
  printed = capsys.readouterr().out.strip()
  section = README.read_text()[README.read_text().index("## The engine: how a method is written") :]
  shown = re.search(r"It prints\n\n```\n(.*?)```", section, re.S).group(1).strip()
  assert printed == shown
