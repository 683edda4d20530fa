"""The house's layout rules, checked over the source (docs/architecture.md): modality names come from
the table, modules stay small, and no two modules import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from sensors.core import schema

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sensors", "runtime", "exporters", "training")
SOURCES = sorted(p for d in (*PACKAGES, "deploy") for p in (REPO / d).rglob("*.py"))
MAX_LINES = 450

# The source modules that may write a modality name as a string literal, and why (at most 8).
MODALITY_LITERALS_ALLOWED = {
    "sensors/core/schema.py": "the modality table itself",
    "sensors/fuzz_messages.py": "hostile messages crafted topic by topic",
    "sensors/simulate/realism.py": "each of MM-Fi's four sensors measured against its real counterpart",
    "runtime/bench.py": "synthetic sensor frames of realistic size, per sensor",
    "training/study_arms.py": "the study's arms (modality subsets of the paper's table)",
    "training/study_report.py": "the paper's per-modality figures the study is compared with",
    "training/fair_plan.py": "the fair test's arms and the paper's per-modality ratios it selects by",
    "training/fair_report.py": "the fair test's report rows, per arm",
}


def _modality_literals(path: Path) -> int:
    tree = ast.parse(path.read_text(), filename=str(path))
    return sum(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in schema.MODALITIES
               for n in ast.walk(tree))


def test_modality_names_are_written_in_few_modules():
    assert len(SOURCES) > 100
    writing = {str(p.relative_to(REPO)) for p in SOURCES if _modality_literals(p)}
    unexpected = sorted(writing - set(MODALITY_LITERALS_ALLOWED))
    assert not unexpected, (f"{unexpected} write a modality name as a literal: iterate "
                            f"sensors.core.schema.MODALITY_SPECS (or dispatch on ModalitySpec.kind) instead")
    assert len(MODALITY_LITERALS_ALLOWED) <= 8
    assert writing, "the counter found no literal at all: it cannot be working"


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they hold): {long}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file, lazily or not)."""
    modules = {_module_name(p): p for p in SOURCES if p.parts[len(REPO.parts)] in PACKAGES}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_between_modules():
    graph = _graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 200
    cycles = _cycles(graph)
    assert not cycles, f"modules importing each other in a circle: {cycles}"
