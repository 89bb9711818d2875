"""The package's layers import only downward: cli -> training -> jobs -> viz -> storage -> env -> policies -> metrics
-> core.

A newcomer reads the architecture from the tree; this test keeps the tree honest. Every ``import`` and
``from ... import`` in engine/ (at any depth of the file, lazy imports included) is checked.
"""

import ast
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
LAYERS = ["core", "metrics", "policies", "env", "storage", "viz", "jobs", "training", "cli"]  # bottom to top


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "engine":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    package = "engine." + ".".join(path.relative_to(ENGINE).with_suffix("").parts[:-1])
    package = package.rstrip(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x
                    found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
                    continue
            else:
                module = node.module
            found.append((node.lineno, module))
    return found


def layer_violations() -> list[str]:
    bad = []
    for path in sorted(ENGINE.rglob("*.py")):
        own = layer_of("engine." + ".".join(path.relative_to(ENGINE).with_suffix("").parts))
        if own not in LAYERS:
            continue  # engine/__init__.py, __main__.py and train.py (entry points) sit above every layer
        for line, module in imported_modules(path):
            target = layer_of(module)
            if target == "top" and module != "engine":
                bad.append(f"{path.relative_to(ENGINE.parent)}:{line} imports {module} (outside the layers)")
            elif target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                bad.append(
                    f"{path.relative_to(ENGINE.parent)}:{line} ({own}) imports {module} ({target}, a layer above)"
                )
    return bad


def test_every_module_sits_in_a_layer():
    stray = [p.name for p in ENGINE.glob("*.py") if p.name not in ("__init__.py", "__main__.py", "train.py")]
    assert stray == [], f"modules outside the layers {LAYERS}: {stray}"


def test_imports_only_go_down():
    assert layer_violations() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    core = tmp_path / "engine" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("def f():\n    from ..jobs.run import run_job\n")
    (core / "good.py").write_text("from .policy import load_agent\nimport torch\n")
    monkeypatch.setattr(sys.modules[__name__], "ENGINE", tmp_path / "engine")
    assert layer_violations() == ["engine/core/bad.py:2 (core) imports engine.jobs.run (jobs, a layer above)"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_cycles() -> list[list[str]]:
    """Every loop of engine modules that import each other (lazy imports inside functions included; a package's
    ``__init__`` only hands names on and is left out), each as the modules along it, the first one again last."""
    modules = {module_name(p): p for p in sorted(ENGINE.rglob("*.py")) if p.name != "__init__.py"}
    graph = {
        name: sorted({m for _, m in imported_modules(path) if m in modules and m != name})
        for name, path in modules.items()
    }
    cycles, done, path = [], set(), []

    def visit(name: str) -> None:  # depth first; a module on the current path reached again closes a loop
        if name in path:
            cycles.append(path[path.index(name) :] + [name])
            return
        if name in done:
            return
        path.append(name)
        for target in graph[name]:
            visit(target)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)
    return cycles


def test_no_modules_import_each_other():
    """Inside a layer too, imports go one way: a module that needs another's names sits below it, and an import
    moved into a function to dodge a loop still counts."""
    assert import_cycles() == []


def test_the_cycle_finder_sees_a_lazy_loop(tmp_path, monkeypatch):
    jobs = tmp_path / "engine" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "__init__.py").write_text("")
    (jobs / "a.py").write_text("from .b import f\n")
    (jobs / "b.py").write_text("def f():\n    from .a import g\n")
    (jobs / "c.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ENGINE", tmp_path / "engine")
    assert import_cycles() == [["engine.jobs.a", "engine.jobs.b", "engine.jobs.a"]]


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_package_documents_itself(layer):
    assert ast.get_docstring(ast.parse((ENGINE / layer / "__init__.py").read_text()))


def test_the_package_states_its_version():
    from importlib.metadata import version

    import engine

    assert engine.__version__ == version("atari-saliency-engine")


def os_calls(name: str) -> list[str]:
    """The files of engine/ that call ``os.<name>(...)``, once per call."""
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == name and getattr(func.value, "id", None) == "os":
                found.append(str(path.relative_to(ENGINE.parent)))
    return found


def test_one_helper_writes_files_atomically():
    """Write-to-temp-then-rename lives in engine/core/files.py only; the one other rename creates a group's directory
    atomically, a store's and a games root's alike (engine/storage/store.py: create_atomically)."""
    assert os_calls("replace") == ["engine/core/files.py"]
    assert os_calls("rename") == ["engine/storage/store.py"]


def test_one_replay_of_recurrent_states():
    defined = {
        str(p.relative_to(ENGINE.parent))
        for p in sorted(ENGINE.rglob("*.py"))
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "replay_states"
    }
    assert defined == {"engine/core/replay.py"}
