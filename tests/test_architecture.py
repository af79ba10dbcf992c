"""The layering of docs/ARCHITECTURE.md, checked on the code: imports point down, no circles, no method
module reaches into another, no module loaded by a string.

Every ``import`` of ``reprlab.*`` in ``src/reprlab`` is read with ``ast`` (at module level and inside
functions alike, since a lazy import is still an arrow), so a new file or a new arrow is checked the
moment it is written.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "reprlab"

# the floors, bottom up: a unit may import its own floor's modules only as listed in SHARED, and any lower floor
FLOORS = [
    {"errors"},  # ground
    {"io", "logs", "cli_format"},
    {"nn", "train"},  # building blocks, the training loop and the recipe contract
    {"hub"},  # model folders (HF layout)
    {"text"},  # tokenizer, readers, splits
    {"onnx"},  # ONNX export and the ONNX Runtime backend of SentenceEncoder (takes the model; encoder imports it)
    {"encoder"},  # the one transformer stack
    {"retrieval", "pretrain", "distill", "qa", "recsys", "analysis"},  # the methods
    {"demo"},
    {"recipes"},  # the registry, filled: imports every recipe module
    {"serve"},  # the HTTP service (reprlab serve): uses the methods; the CLI starts it
    {"cli"},
    {"__main__"},  # __main__.py: python -m reprlab = the CLI
]
# modules of the method floor that other method packages may use (the shared services)
SHARED = {
    "reprlab.retrieval.index", "reprlab.retrieval.binary", "reprlab.retrieval.bm25", "reprlab.retrieval.metrics",
    "reprlab.retrieval.dense", "reprlab.retrieval.pipeline", "reprlab.retrieval.fusion",
    "reprlab.retrieval.dual_encoder", "reprlab.retrieval.pairs", "reprlab.retrieval.losses",
    "reprlab.retrieval.mining", "reprlab.qa.squad", "reprlab.qa.reader",
    "reprlab.qa.open_qa", "reprlab.qa.teachers",  # what FiD and reader distillation share (data, teacher kinds)
}
# modules of the method floor that implement one paper each: neither they nor the shared services import
# another one (what two share moves down). nn's files are one paper each too, but they are building blocks
# that anything above may use.
METHODS = {
    "reprlab.pretrain.cmlm", "reprlab.pretrain.demi", "reprlab.pretrain.pmi",
    "reprlab.pretrain.jaket", "reprlab.distill.kd", "reprlab.distill.ckd", "reprlab.distill.seed",
    "reprlab.distill.approx", "reprlab.retrieval.dpr", "reprlab.retrieval.ance", "reprlab.retrieval.hashing",
    "reprlab.retrieval.mdr", "reprlab.retrieval.reader_distill", "reprlab.qa.block_skim", "reprlab.qa.long_reader",
    "reprlab.qa.fid", "reprlab.recsys.deep_retrieval", "reprlab.analysis.cka", "reprlab.analysis.natural_tasks",
}  # not train.curriculum: it is the training loop's sampler service (train floor), which any recipe may use
# recipes that compose methods: the distillation recipe trains KD, CKD or SEED
COMPOSERS = {"reprlab.distill.recipe": {"reprlab.distill.kd", "reprlab.distill.ckd", "reprlab.distill.seed"},
             "reprlab.pretrain.mlm": {"reprlab.pretrain.pmi"},  # MLM with any masking scheme, PMI's included
             "reprlab.qa.recipe": {"reprlab.qa.block_skim"}}  # the reader recipe trains plain or Block Skim readers


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The reprlab modules ``path`` imports (``from reprlab.x import name`` counts as reprlab.x.name when
    that is a module, else reprlab.x). Imports under ``if TYPE_CHECKING:`` are annotations, not arrows."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("reprlab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reprlab") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found - {module_name(path)}


def unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def floor(module: str) -> int:
    name = unit(module)
    for i, units in enumerate(FLOORS):
        if name in units:
            return i
    raise AssertionError(f"{module} is in no floor of tests/test_architecture.py: add its package to FLOORS "
                         "and to docs/ARCHITECTURE.md")


def method_of(module: str) -> str | None:
    return next((m for m in METHODS if module == m or module.startswith(m + ".")), None)


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: {m for m in imports(path, known) if m in known or unit(m)} for name, path in mods.items()}


def test_every_module_is_on_a_floor():
    for name in modules():
        if name != "reprlab":
            floor(name)


def test_imports_point_down():
    bad = []
    for src, targets in graph().items():
        if src == "reprlab":
            continue
        for dst in targets:
            if dst == "reprlab" or unit(dst) == unit(src):
                continue
            a, b = floor(src), floor(dst)
            if b > a or (b == a and dst not in SHARED):
                bad.append(f"{src} -> {dst}")
    assert not bad, "imports that point up or sideways (see docs/ARCHITECTURE.md):\n" + "\n".join(sorted(bad))


def test_no_method_module_imports_another():
    bad = []
    for src, targets in graph().items():
        own = method_of(src)
        if own is None and src not in SHARED and src not in COMPOSERS:
            continue  # package faces, the demo, the recipe registry and the CLI may use any method
        allowed = COMPOSERS.get(src, set())
        for dst in targets:
            other = method_of(dst)
            if other and other != own and other not in allowed:
                bad.append(f"{src} -> {dst}")
    assert not bad, "method modules importing other methods (move what they share down):\n" + "\n".join(sorted(bad))


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if nxt not in g:
                continue
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_nothing_imports_the_cli_and_no_module_is_loaded_by_a_string():
    for name, path in modules().items():
        text = path.read_text()
        if unit(name) not in ("cli", "__main__"):
            assert not any(unit(m) == "cli" for m in graph()[name]), f"{name} imports the CLI"
        assert "import_module(" not in text or "reprlab." not in text.split("import_module(", 1)[1][:80], \
            f"{name} loads a reprlab module by a string: import it, or let it register itself"


@pytest.mark.parametrize("limit", [600])
def test_no_source_file_over_the_limit(limit):
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"files over {limit} lines: {long}"


def test_no_function_over_100_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "functions over 100 lines:\n" + "\n".join(long)


def test_no_test_imports_the_tests_folder_as_a_package():
    """`make test` runs a plain `pytest`, which cannot import `tests.conftest` (there is no tests/__init__.py);
    `python -m pytest` can, so such an import passes locally and fails in CI. Use the conftest fixtures."""
    tests = Path(__file__).resolve().parent
    bad = [str(p.relative_to(tests)) for p in tests.rglob("*.py")
           if re.search(r"^\s*(from tests[. ]|import tests\b)", p.read_text(encoding="utf-8"), flags=re.M)]
    assert not bad, f"these test files import the tests folder as a package: {bad}"
