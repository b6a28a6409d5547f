"""The package layout: rooms by concept, lower rooms never import higher ones, short functions, old names work."""
import ast
import importlib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a module may import its own room and the rooms before it, never a later one.
ROOMS = ["models", "ops.common", "ops.data", "ops.evaluate", "ops.train", "ops.analysis", "ops.plots", "ops.paper",
         "ops.cli"]
CLI = {"ops/run.py", "ops/demo.py", "ops/__init__.py"}
SHIMS = {"runtime", "datasets", "loaders", "corruptions", "tests", "predict", "metrics", "stats", "reports",
         "configs", "runs", "trains", "syncbn", "pretrained", "landscapes", "hessians", "featuremaps", "robustness",
         "landscape_plots"}


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


def test_ops_top_level_holds_only_the_command_line_and_shims():
    top = {p.name for p in (ROOT / "ops").glob("*.py")}
    assert top - {p.split("/")[-1] for p in CLI} == {f"{s}.py" for s in SHIMS}
    for name in SHIMS:  # each shim is a thin forward that says where the code went
        text = (ROOT / "ops" / f"{name}.py").read_text()
        assert text.startswith('"""Moved to ops.') and "forward(" in text and len(text.splitlines()) <= 8


def test_lower_rooms_never_import_higher_ones():
    problems = []
    for path in _modules():
        name = _name(path)
        if path.relative_to(ROOT).as_posix() in CLI or name.split(".")[-1] in SHIMS and name.count(".") == 1:
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


# Names a user may have imported from the old flat modules, with the object they must still give.
OLD_NAMES = {
    "ops.tests": {"sweep": "ops.evaluate.engine.sweep", "test": "ops.evaluate.engine.test",
                  "PAPER_SIZES": "ops.evaluate.engine.PAPER_SIZES"},
    "ops.predict": {"predict_log_probs": "ops.evaluate.engine.predict_log_probs",
                    "is_stochastic": "ops.evaluate.engine.behaves_stochastically"},
    "ops.trains": {"train": "ops.train.trainer.train", "init_distributed": "ops.train.distributed.init_distributed",
                   "save_checkpoint": "ops.train.trainer.save_epoch", "load_data": "ops.train.trainer.load_data"},
    "ops.pretrained": {"load_checkpoint": "ops.train.pretrained.load_trained",
                       "find_checkpoint": "ops.train.pretrained.find_trained",
                       "load_models": "ops.train.pretrained.load_models"},
    "ops.corruptions": {"corrupt": "ops.data.corruptions.corrupt",
                        "generate_corrupted": "ops.data.corrupted_sets.generate_corrupted"},
    "ops.landscapes": {"landscape": "ops.analysis.landscapes.landscape", "FixedMasks": "ops.analysis.fixed.FixedMasks",
                       "read_csv": "ops.analysis.landscape_files.read_csv"},
    "ops.featuremaps": {"mc_variance": "ops.analysis.featuremaps.mc_variance",
                        "fourier_figure": "ops.plots.featuremaps.fourier_figure"},
    "ops.robustness": {"summary": "ops.analysis.robustness.corruption_summary"},
    "ops.syncbn": {"convert": "ops.train.distributed.convert_sync_batchnorm"},
    "ops.landscape_plots": {"landscape_figure": "ops.plots.landscapes.landscape_figure"},
    "ops.plots": {"reliability_diagram": "ops.plots.classification.reliability_diagram"},
    "ops.runs": {"write_json": "models.atomic.write_json", "RunFolder": "ops.train.runs.RunFolder"},
    "ops.stats": {"bootstrap": "ops.evaluate.intervals.bootstrap"},
    "ops.configs": {"load_config": "ops.train.configs.load_config"},
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_imports_keep_working(old):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    for name, new in OLD_NAMES[old].items():
        new_module, attr = new.rsplit(".", 1)
        assert getattr(module, name) is getattr(importlib.import_module(new_module), attr), f"{old}.{name}"
    if old != "ops.plots":  # a package now, not a shim
        with pytest.raises(AttributeError, match="moved to"):
            module.no_such_name


def test_every_shim_forwards_to_modules_that_exist():
    for name in SHIMS:
        source = (ROOT / "ops" / f"{name}.py").read_text()
        targets = ast.literal_eval(source[source.index("["):source.index("]") + 1])
        for target in targets:
            importlib.import_module(target)


def test_the_readme_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Where things live"):readme.index("## Models")]
    for path in _modules():
        if path.name == "__init__.py" or path.parent == ROOT / "ops":
            continue
        room = path.parent.relative_to(ROOT).as_posix() + "/"
        assert room in section, f"{room} is not in the README's map"
        line = section[section.index(room):].split("\nops/")[0] if room != "models/" else section
        assert path.stem in line, f"{path.relative_to(ROOT)} is not named in the README's map"
