"""The package's shape, checked: no import cycles among medrecon's modules (module-level and
function-level imports alike, read with ``ast``), no module over the size a newcomer can read,
and no modality code in the core."""

from __future__ import annotations

import ast
from pathlib import Path

import medrecon

ROOT = Path(medrecon.__file__).parent
#: the most lines a module of medrecon/ may have (issue 21: "no module over ~450 lines")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The medrecon modules that module ``name`` imports anywhere in its code (the deepest
    existing module of each dotted name; ``from pkg import sub`` counts ``pkg.sub`` when ``sub`` is
    a module, else ``pkg``)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # a package counts with what its __init__ imports: `from medrecon.engine import reconstruct`
    # runs medrecon/engine/__init__.py, which imports the engine's modules
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert cycles == [], "import cycles (module-level or inside functions): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_too_long_to_read():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_core_holds_no_ultrasound_code():
    """DESIGN.md: modality code lives in its plugin (B-mode display, region metrics, gCNR)."""
    offenders = []
    for name, path in _modules().items():
        text = path.read_text()
        for word in ("def gcnr", "def envelope", "def log_compress", "def speckle_size"):
            if word in text:
                offenders.append(f"{name}: {word}")
    assert offenders == []
