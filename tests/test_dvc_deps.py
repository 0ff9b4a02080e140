"""dvc.yaml lists, for every stage, each project module its code can import, so that editing any of them makes
`dvc repro` re-run the stage (and nothing claims to be up to date over stale results).

The imports are read statically (every ``import`` in a module, module level or inside functions), transitively,
from the stage's own module ``pipelines/stages/<name>.py``. The shared runner modules (the CLI entry, MLflow
tracking, environment defaults) only validate params and log; they are not followed. The params schema holds
the defaults, so every stage lists it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUNNER = {"pipelines/stage.py", "pipelines/tracking.py", "pipelines/env.py", "pipelines/__init__.py",
          "pipelines/stages/__init__.py", "maskdcpt/__init__.py", "maskdcpt/config.py"}
ALWAYS = {"pipelines/params.py", "pipelines/stages/common.py"}


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, lazy_exports: bool = True) -> set[str]:
    """Project modules imported anywhere in ``path`` (absolute and relative imports; ``from a import b`` also
    counts ``a.b`` when that is a module). A package that re-exports lazily counts all its modules, unless
    ``lazy_exports`` is false: it is only passed through on the way to one of its modules, so its ``__getattr__``
    never runs."""
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(REPO).with_suffix("").parts)
    if path.name == "__init__.py":
        pkg = pkg.rsplit(".", 1)[0] + ".__init__"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")[: -node.level]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    if lazy_exports and "importlib.import_module(f\"{__name__}." in path.read_text():  # a package that re-exports lazily
        names.update(f"{pkg.rsplit('.', 1)[0]}.{f.stem}" for f in path.parent.glob("*.py"))
    return {n for n in names if n.split(".")[0] in ("maskdcpt", "pipelines") and _module_file(n)}


def closure(start: Path) -> set[str]:
    """Repo-relative paths of ``start`` and every project module reachable from it by imports."""
    seen: dict[str, bool] = {}   # rel path -> whether its lazy re-exports were followed
    todo = [(start, True)]
    while todo:
        path, lazy_exports = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen and (seen[rel] or not lazy_exports):
            continue
        seen[rel] = lazy_exports
        if rel in RUNNER and path != start:
            continue
        for name in _imports(path, lazy_exports):
            parts = name.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a/b/__init__.py too
                f = _module_file(".".join(parts[:i]))
                if f is not None:
                    todo.append((f, i == len(parts)))
    return set(seen) - RUNNER


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", list(_stages()))
def test_every_imported_module_is_a_dependency(stage):
    body = _stages()[stage]
    body = body.get("do", body)
    deps = [str(d) for d in body.get("deps", [])]
    module = REPO / "pipelines" / "stages" / f"{stage}.py"
    assert module.is_file(), f"stage {stage}: no module {module.relative_to(REPO)}"
    needed = _needed(module)
    missing = sorted(m for m in needed if not _covered(m, deps))
    assert not missing, f"dvc.yaml stage {stage!r} does not list these modules it imports: {missing}"


def _needed(module: Path) -> set[str]:
    """The stage module's closure plus the closure of what every stage runs (the params schema and the shared
    stage helpers: the training params groups the schema composes are defaults too)."""
    return closure(module).union(*(closure(REPO / a) for a in sorted(ALWAYS)))


@pytest.mark.parametrize("stage", list(_stages()))
def test_no_stage_lists_code_it_cannot_import(stage):
    """The other way round: a code dependency no import reaches re-runs the stage for nothing when it changes."""
    body = _stages()[stage]
    body = body.get("do", body)
    code = [str(d) for d in body.get("deps", []) if str(d).startswith(("maskdcpt", "pipelines"))]
    needed = _needed(REPO / "pipelines" / "stages" / f"{stage}.py")
    unneeded = [d for d in code if not any(_covered(m, [d]) for m in needed)]
    assert not unneeded, f"dvc.yaml stage {stage!r} lists code none of its imports reach: {unneeded}"


def test_closure_follows_function_level_and_relative_imports(tmp_path):
    """The derivation itself: a stage module whose only import is inside a function, of a package using relative
    imports, still pulls in that package's modules."""
    found = closure(REPO / "pipelines" / "stages" / "synthesize.py")
    assert "maskdcpt/data/synthesize.py" in found          # imported inside the stage function
    assert "maskdcpt/degradations/base.py" in found        # reached through `from .base import ...`
    assert "pipelines/stage.py" not in found


def test_closure_passes_through_a_lazy_package_to_one_module():
    """Importing one module of a lazily re-exporting package runs only that package's ``__init__`` (which imports
    nothing at run time); naming the package itself may reach any of its modules."""
    through = closure(REPO / "pipelines" / "params.py")      # imports maskdcpt.data.testsets.params only
    assert {"maskdcpt/data/testsets/params.py", "maskdcpt/data/testsets/__init__.py",
            "maskdcpt/data/__init__.py"} <= through
    assert "maskdcpt/data/testsets/layouts.py" not in through and "maskdcpt/data/photos.py" not in through
    named = closure(REPO / "maskdcpt" / "eval" / "protocol.py")   # `from maskdcpt.data.testsets import DATASETS`
    assert {"maskdcpt/data/testsets/layouts.py", "maskdcpt/data/testsets/training.py"} <= named
