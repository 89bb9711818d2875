"""MkDocs hook (mkdocs.yml: ``hooks``): the docs use files that live outside ``docs/``.

- The figures of ``benchmarks/results/`` are served at ``results/`` (a page links ``results/suite.png``), so the
  site shows the committed figures instead of copies of them.
- ``--8<--`` includes (``pymdownx.snippets``) are resolved from the repository root, wherever ``mkdocs`` is run.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "benchmarks" / "results"


def on_config(config):
    snippets = config.mdx_configs.setdefault("pymdownx.snippets", {})
    snippets["base_path"] = [str(ROOT)]
    return config


def on_files(files, config):
    for path in sorted(FIGURES.rglob("*.png")):
        files.append(File.generated(config, "results/" + path.relative_to(FIGURES).as_posix(), abs_src_path=str(path)))
    return files
