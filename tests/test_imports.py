"""The house flows one way: imports between aepg's modules (function-level ones too) form no circle,
and each goes down the layers cli -> sweep -> launch -> trainer -> models, data, objectives ->
config; the MLflow adapter imports no planning code."""

import ast
from pathlib import Path

import aepg

PACKAGE = Path(aepg.__file__).parent

LAYERS = [  # (layer, module prefixes), lowest first; a module may import its own layer or lower ones
    (0, ("aepg", "aepg.schema", "aepg.catalog", "aepg.records", "aepg.interrupts")),
    (1, ("aepg.config",)),
    (2, ("aepg.metrics", "aepg.plots", "aepg.tracking", "aepg.ray_setup", "aepg.provenance")),
    (3, ("aepg.schedules", "aepg.objectives", "aepg.optim", "aepg.benchmarks", "aepg.models", "aepg.distributed")),
    (4, ("aepg.preflight",)),
    (5, ("aepg.trainer",)),
    (6, ("aepg.checkpoints", "aepg.launch")),
    (7, ("aepg.sweep", "aepg.cluster")),
    (8, ("aepg.cli",)),
]
PLANNING = ("aepg.preflight", "aepg.config.files", "aepg.config.sections", "aepg.launch", "aepg.sweep", "aepg.trainer",
            "aepg.models", "aepg.benchmarks", "aepg.objectives")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> dict[str, set[str]]:
    """Each module's imports of other aepg modules, at any depth of its code."""
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    return max((number for number, prefixes in LAYERS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), default=-1)


def test_every_module_has_a_layer():
    assert [name for name in modules() if layer(name) < 0] == []


def test_no_import_goes_up_a_layer():
    upward = sorted(f"{name} -> {target}" for name, targets in imports().items() for target in targets
                    if layer(target) > layer(name))
    assert upward == []


def test_no_circle_between_modules():
    graph, circles = imports(), []
    index, low, stack, on = {}, {}, [], set()

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    assert circles == []


def test_the_mlflow_adapter_imports_no_planning_code():
    assert sorted(target for target in imports()["aepg.tracking"] if target.startswith(PLANNING)) == []
