"""The layout shows the architecture: each subpackage is one role and imports point one way
(app -> api/engine -> methods/metrics -> core; output never imports a model; only app imports Hydra).
Read from the source (every import statement, also those inside functions), not from a run."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cnnviz"
ROLES = ("core", "methods", "metrics", "models", "data", "output", "speed", "app", "benchmark")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` imports module x
    return found


MODULES = {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def role(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROLES else "top"


def cnnviz_imports(module: str) -> set[str]:
    return {m for m in MODULES[module] if m == "cnnviz" or m.startswith("cnnviz.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_app_imports_hydra_or_omegaconf(module):
    if role(module) == "app":
        return
    bad = {m for m in MODULES[module] if m.split(".")[0] in ("hydra", "omegaconf")}
    assert not bad, f"{module} imports {sorted(bad)}: only cnnviz.app may know Hydra"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if role(m) != "app"))
def test_nothing_outside_app_imports_app(module):
    bad = {m for m in cnnviz_imports(module) if m.startswith("cnnviz.app")}
    # the shims `python -m cnnviz.verify` / `cnnviz.rerun` are the command line's own entry points
    if module in ("cnnviz.verify", "cnnviz.rerun"):
        return
    assert not bad, f"{module} imports {sorted(bad)}"


ALLOWED = {
    "core": {"core"},
    "methods": {"core", "methods", "speed"},
    "metrics": {"core", "metrics", "speed"},
    "speed": {"core", "speed"},
    "data": {"core", "data"},
    "models": {"core", "models", "output", "benchmark"},
    "benchmark": {"core", "data", "benchmark"},
    "output": {"core", "output", "metrics"},
}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if role(m) in ALLOWED))
def test_imports_point_one_way(module):
    used = {role(m) for m in cnnviz_imports(module) if m != "cnnviz"}
    bad = used - ALLOWED[role(module)] - {"top"} if role(module) != "core" else used - {"core"}
    assert not bad, f"{module} ({role(module)}) imports {sorted(bad)}; allowed: {sorted(ALLOWED[role(module)])}"
    if role(module) in ("core", "methods", "metrics", "speed", "data", "output", "models"):
        top = {m for m in cnnviz_imports(module) if role(m) == "top" and m != "cnnviz"}
        assert not top, f"{module} imports the top-level API {sorted(top)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if role(m) == "output"))
def test_output_never_imports_a_model(module):
    bad = {m for m in cnnviz_imports(module) if m.startswith("cnnviz.models")}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_top_level_is_small_and_every_subpackage_says_what_it_holds():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 8, top
    for sub in [p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]:
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 20, f"{sub.name}/__init__.py needs a paragraph saying what lives there"


def test_the_explain_function_does_not_shadow_a_module():
    import cnnviz

    assert callable(cnnviz.explain) and not (PKG / "explain.py").exists()
