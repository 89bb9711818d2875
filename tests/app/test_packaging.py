"""What `pip install .` ships: every package, the configs inside the package, declared version ranges that
include the versions the project runs on, and Hydra kept out of the engine's lower layers.

The wheel itself is built, installed into a fresh venv and run by ``.ci/wheel_check.sh`` (CI)."""

import ast
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from engine.cli import app, scaffold

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def test_every_engine_package_is_in_the_wheel():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "engine").rglob("__init__.py")}
    assert found <= set(SETUPTOOLS["packages"]), (
        f"missing from pyproject packages: {sorted(found - set(SETUPTOOLS['packages']))}"
    )


def test_the_configs_ship_inside_the_package():
    assert "engine.configs" in SETUPTOOLS["packages"] and SETUPTOOLS["package-dir"]["engine.configs"] == "configs"
    patterns = SETUPTOOLS["package-data"]["engine.configs"]
    configs = [p for p in (ROOT / "configs").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert configs and all(p.suffix == ".yaml" for p in configs), "only .yaml files are shipped from configs/"
    assert any(p.parent != ROOT / "configs" for p in configs) and "**/*.yaml" in patterns and "*.yaml" in patterns
    agent_data = SETUPTOOLS["package-data"]["engine"]
    assert "agents/*/*.pt" in agent_data and "agents/*/*.json" in agent_data


def test_the_app_finds_the_shipped_configs_first(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "engine"
    (package / "configs").mkdir(parents=True)
    monkeypatch.setattr(scaffold, "PACKAGE_DIR", package)
    monkeypatch.setattr(scaffold, "PROJECT_ROOT", package.parent)
    assert scaffold.config_dir() == package.parent / "configs"  # no engine/configs/main.yaml: the checkout's folder
    (package / "configs" / "main.yaml").write_text("defaults: []\n")
    assert scaffold.config_dir() == package / "configs"  # a wheel install
    assert scaffold.CONFIG_DIR == ROOT / "configs"  # this checkout
    # the names the app has always had (tests, .ci/wheel_check.sh) are the scaffold's
    assert (app.CONFIG_DIR, app.PROJECT_ROOT, app.config_dir) == (scaffold.CONFIG_DIR, ROOT, scaffold.config_dir)


@pytest.mark.parametrize("version", ["3.11.7", "3.12.3"])  # CI (CPU) and the GPU machines
def test_requires_python_covers_the_versions_run(version):
    assert version in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize(
    "name,version", [("torch", "2.14.1"), ("torch", "2.11.0"), ("torchvision", "0.29.1"), ("torchvision", "0.26.0")]
)
def test_dependency_ranges_cover_the_versions_run(name, version):
    (spec,) = [d for d in PYPROJECT["project"]["dependencies"] if d.split(">")[0].split("<")[0].split("=")[0] == name]
    assert "==" not in spec, f"{spec}: exact pins belong in .ci/constraints.txt"
    assert version in SpecifierSet(spec[len(name) :])


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_cpu_torch_command_asks_for_the_declared_ranges(page):
    """The front door's CPU-build command names pyproject's ranges, so a later torch is never installed first and
    then replaced by the default (CUDA) wheel."""
    text = (ROOT / page).read_text()
    (command,) = [line for line in text.splitlines() if "download.pytorch.org/whl/cpu" in line]
    for name in ("torch", "torchvision"):
        (spec,) = [d for d in PYPROJECT["project"]["dependencies"] if d.split(">")[0] == name]
        assert f'"{spec}"' in command, (page, spec)


@pytest.mark.parametrize("layer", ["core", "env", "io"])
def test_the_engine_layers_never_import_hydra(layer):
    offenders = []
    for path in sorted((ROOT / "engine" / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in ("hydra", "omegaconf")
            ]
    assert offenders == []
