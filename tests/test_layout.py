"""The package layout: rooms by concept, lower rooms never import higher ones, short functions, a map in the README."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a module may import its own room and the rooms before it, never a later one.
ROOMS = ["models", "ops.common", "ops.data", "ops.evaluate", "ops.train", "ops.analysis", "ops.plots", "ops.paper",
         "ops.cli"]
CLI = {"ops/run.py", "ops/demo.py", "ops/__init__.py"}
SUBPACKAGES = {"common", "data", "evaluate", "train", "analysis", "plots", "paper"}


def _modules():
    return sorted(p for folder in ("models", "ops") for p in (ROOT / folder).rglob("*.py"))


def _room(module_name):
    if module_name.startswith("models"):
        return "models"
    parts = module_name.split(".")
    if len(parts) >= 2 and f"ops.{parts[1]}" in ROOMS:
        return f"ops.{parts[1]}"
    return "ops.cli"


def _name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path):
    """Absolute names of everything `path` imports (relative imports resolved)."""
    tree, package = ast.parse(path.read_text()), _name(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = _name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def test_ops_top_level_holds_only_the_command_line_and_the_subpackages():
    # The flat module names of earlier versions (ops.tests, ops.metrics, ...) are gone: no shims, no forwards.
    top = {p.name for p in (ROOT / "ops").iterdir() if p.name != "__pycache__"}
    assert top == {p.split("/")[-1] for p in CLI} | SUBPACKAGES
    for name in SUBPACKAGES:
        assert (ROOT / "ops" / name / "__init__.py").is_file(), name


def test_lower_rooms_never_import_higher_ones():
    problems = []
    for path in _modules():
        name = _name(path)
        if path.relative_to(ROOT).as_posix() in CLI:
            continue
        mine = ROOMS.index(_room(name))
        for target in _imports(path):
            if not (target.startswith("ops") or target.startswith("models")) or target in ("ops", "models"):
                continue
            if ROOMS.index(_room(target)) > mine:
                problems.append(f"{name} imports {target}")
    assert problems == []


def test_figures_are_drawn_only_in_the_plotting_package():
    drawers = [_name(p) for p in _modules() if "matplotlib" in {i.split(".")[0] for i in _imports(p)}]
    assert drawers and all(d.startswith("ops.plots") for d in drawers), drawers


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_every_module_says_what_it_is():
    missing = [_name(p) for p in _modules() if p.stat().st_size and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []


# The modules of the old flat layout, which no longer exist: importing one fails instead of forwarding.
OLD_MODULES = ["ops.configs", "ops.corruptions", "ops.datasets", "ops.featuremaps", "ops.hessians",
               "ops.landscape_plots", "ops.landscapes", "ops.loaders", "ops.metrics", "ops.predict", "ops.pretrained",
               "ops.reports", "ops.robustness", "ops.runs", "ops.runtime", "ops.stats", "ops.syncbn", "ops.tests",
               "ops.trains", "ops.common.shims"]


@pytest.mark.parametrize("old", OLD_MODULES)
def test_old_flat_modules_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_nothing_imports_an_old_flat_module():
    old = "|".join(re.escape(m) for m in OLD_MODULES)
    flat = "|".join(m.split(".")[-1] for m in OLD_MODULES if m.count(".") == 1)
    pattern = re.compile(rf"\b(?:import|from)\s+({old})\b|\bfrom\s+ops\s+import\s+\(?\s*({flat})\b")
    files = [*ROOT.glob("*.ipynb"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    files += [p for folder in ("models", "ops", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in pattern.finditer(p.read_text())]
    assert found == []


def test_the_readme_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Where things live")
    section = readme[start:readme.index("\n## ", start)]
    for path in _modules():
        if path.name == "__init__.py" or path.parent == ROOT / "ops":
            continue
        room = path.parent.relative_to(ROOT).as_posix() + "/"
        assert room in section, f"{room} is not in the README's map"
        line = section[section.index(room):].split("\nops/")[0] if room != "models/" else section
        assert path.stem in line, f"{path.relative_to(ROOT)} is not named in the README's map"
