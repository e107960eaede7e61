"""The package's layering (docs/architecture.md): no import cycles, no component importing a
command, and torch imported at module level only in the torch layer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "robust_api"

#: Modules that may import torch (or safetensors) when they are imported.
TORCH_LAYER = ("robust_api.denoisers.", "robust_api.models.", "robust_api.commands.train_fashion_mnist")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, at module level?) for every import in the file, resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top_level
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, id(node) in top_level
            for alias in node.names:  # "from . import x" imports the submodule x
                yield f"{module}.{alias.name}", id(node) in top_level


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target, _ in _imports(path) if target in modules and target != name}
    return modules, edges


def test_no_import_cycles():
    modules, edges = _graph()
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(modules):
        if node not in state:
            visit(node)
    assert len(modules) > 50  # the walk saw the package


def test_no_component_imports_a_command():
    modules, edges = _graph()
    offenders = [(name, target) for name, targets in edges.items() for target in targets
                 if target.startswith("robust_api.commands") and not name.startswith("robust_api.commands")
                 and name != "robust_api.__main__"]
    assert offenders == []


def test_torch_is_imported_at_module_level_only_in_the_torch_layer():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.startswith(TORCH_LAYER):
            continue
        for target, top_level in _imports(path):
            if top_level and target.split(".")[0] in ("torch", "safetensors"):
                offenders.append((name, target))
    assert offenders == []
