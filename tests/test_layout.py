"""The package layout: imports flow one way (no circle anywhere, lower layers never import higher
ones) and ``nasnet_core``'s top level holds only its subpackages and ``__init__``.

Every import statement counts, the ones inside functions too: a late import that goes up a layer
is still a circle waiting for someone to hoist it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nasnet_core", "nasnet_det")
# Lower number = lower layer; a module may import its own layer or lower ones only.
LAYERS = {
    "nasnet_core.common": 0,    # config schema, CLI helpers, file I/O, datasets, errors
    "nasnet_core.model": 1,     # layers -> ops -> genotype -> cell -> plan -> network -> registry
    "nasnet_core.interop": 2,   # conversion, TF checkpoints, timm, ONNX, fused inference
    "nasnet_core.train": 3,     # classification training
    "nasnet_core.search": 4,    # architecture search
    "nasnet_core": 5,           # the package's public face (__init__)
    "nasnet_det": 6,            # the Detectron2 adapter
}
SUBPACKAGES = {"common", "model", "interop", "train", "search"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:   # `import a.b.c` of a non-module name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _layer(name: str) -> tuple[str, int]:
    best = max((key for key in LAYERS if name == key or name.startswith(key + ".")), key=len)
    return best, LAYERS[best]


def test_find_cycle_sees_a_circle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_anywhere():
    graph = _graph()
    assert len(graph) > 40
    cycle = _find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_flow_down_the_layers():
    bad = []
    for name, targets in _graph().items():
        here, rank = _layer(name)
        for target in targets:
            there, target_rank = _layer(target)
            if target_rank > rank and not (here == "nasnet_core" and name == "nasnet_core"):
                bad.append(f"{name} ({here}) imports {target} ({there})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["nasnet_core"])
def test_core_never_imports_detectron2(package):
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("detectron2", "nasnet_det")], path


def test_core_top_level_is_subpackages_only():
    top = ROOT / "nasnet_core"
    modules = sorted(p.name for p in top.glob("*.py"))
    packages = {p.name for p in top.iterdir() if (p / "__init__.py").is_file()}
    assert modules == ["__init__.py"]
    assert packages == SUBPACKAGES
