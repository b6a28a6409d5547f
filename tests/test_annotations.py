"""Type hints: at least 80% of the public functions and methods of models/ and ops/ (ops/paper included) are fully
annotated: every parameter (self/cls aside, *args and **kwargs included) and the return.

Public: a name without a leading underscore, in a module without one (`__init__.py` counts), defined at module level
or as a method of a public class."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARE = 0.8


def _public_functions(tree):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node, False
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    yield item, True


def _fully_annotated(fn, method):
    a = fn.args
    params = a.posonlyargs + a.args + a.kwonlyargs
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if method and not static and params and params[0].arg in ("self", "cls"):
        params = params[1:]
    params += [p for p in (a.vararg, a.kwarg) if p is not None]
    return fn.returns is not None and all(p.annotation is not None for p in params)


def annotation_counts(root=ROOT):
    """{module path: (fully annotated, public functions)} over models/ and ops/."""
    counts = {}
    for path in sorted([*root.glob("models/**/*.py"), *root.glob("ops/**/*.py")]):
        rel = path.relative_to(root)
        if any(part.startswith("_") and part != "__init__.py" for part in rel.parts):
            continue
        found = [_fully_annotated(fn, method) for fn, method in _public_functions(ast.parse(path.read_text()))]
        if found:
            counts[rel.as_posix()] = (sum(found), len(found))
    return counts


def test_the_counter_sees_parameters_returns_and_methods():
    source = ("def a(x: int) -> int: ...\ndef b(x) -> int: ...\ndef c(x: int): ...\ndef _d(x): ...\n"
              "def e(*args: int, **kw) -> None: ...\nclass K:\n    def f(self, y: str) -> str: ...\n"
              "    @staticmethod\n    def g(y) -> None: ...\n    def _h(self): ...\nclass _P:\n    def i(self): ...\n")
    found = [(fn.name, _fully_annotated(fn, m)) for fn, m in _public_functions(ast.parse(source))]
    assert found == [("a", True), ("b", False), ("c", False), ("e", False), ("f", True), ("g", False)]


def test_most_public_functions_are_fully_annotated():
    counts = annotation_counts()
    done, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    assert total > 300, total  # the whole library was counted
    worst = sorted(counts.items(), key=lambda kv: kv[1][0] - kv[1][1])[:8]
    assert done / total >= SHARE, (f"{done} of {total} public functions fully annotated ({done / total:.1%}); "
                                   f"least annotated: {worst}")
