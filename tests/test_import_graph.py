"""The package's modules import only downwards, with no circles.

The graph counts every relative import, the function-local and ``TYPE_CHECKING`` ones included. Each module
sits in one layer (docs/architecture.md); a module may import modules of its own layer or below, and the
graph must have no cycle.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "slowsde_jax"

# A subpackage (geometry/, paper/) sits in its top name's layer; its modules are checked as nodes of their own.
LAYERS = [
    ("leaves", {"_version", "_precision", "_pattern", "_batching", "_small_linalg", "_memory", "brownian", "progress",
                "sharding", "compile_cache", "validation", "_io", "_checkpoint", "_structure", "_runtime_checks", "streaming", "_matrix_power",
                "distributed"}),
    ("models", {"problems", "noise", "methods", "trajectory"}),
    ("math", {"geometry", "sharpness"}),
    ("shared", {"options", "inputs", "sweep"}),
    ("engines", {"discrete", "sde", "integrators", "slow_engine"}),
    ("analysis", {"observables", "regime", "comparison", "potential"}),
    ("app", {"paper", "plotting", "config", "runs"}),
    ("jobs", {"jobs"}),
    ("front", {"cli", "__main__", "__init__"}),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def _module_names() -> dict[str, Path]:
    """Dotted names relative to the package ("geometry.dense"; a subpackage's face is "geometry", the
    package's own face "__init__") -> file."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def level(module: str) -> int:
    return LEVEL[module.split(".")[0]]


def import_graph() -> dict[str, set[str]]:
    modules = _module_names()
    graph = {}
    for name, path in modules.items():
        is_face = path.name == "__init__.py" and name != "__init__"
        package = name.split(".") if is_face else name.split(".")[:-1]  # the package its relative imports start in
        deps = set()

        def resolve(base: list[str], rest: str = "") -> str:
            dotted = ".".join(base + ([rest] if rest else []))
            while dotted and dotted not in modules:  # a name inside a module: the module
                dotted = dotted.rpartition(".")[0]
            return dotted or "__init__"

        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.module:
                    deps.add(resolve(base, node.module))
                else:  # from . import x: a module, or a name of the package face
                    deps |= {resolve(base, a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slowsde_jax"):
                deps.add(resolve([], node.module.partition(".")[2]))
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("slowsde_jax."):
                    deps.add(resolve([], arg.value.partition(".")[2]))
        graph[name] = deps - {name}
    return graph


def test_every_module_has_a_layer():
    tops = {m.split(".")[0] for m in _module_names()}
    assert tops == set(LEVEL), {"without a layer": sorted(tops - set(LEVEL)), "gone": sorted(set(LEVEL) - tops)}


def test_the_graph_sees_subpackages():
    graph = import_graph()
    assert {"geometry.dense", "geometry.projection"} <= set(graph)
    assert "geometry.dense" in graph["geometry.least_squares"] and "validation" in graph["geometry.dense"]
    assert "geometry" in graph["sde.coefficients"] and "sde.coefficients" in graph["sde.solvers"]


def test_no_upward_arrows():
    up = sorted(f"{m} ({LAYERS[level(m)][0]}) -> {d} ({LAYERS[level(d)][0]})"
                for m, deps in import_graph().items() for d in deps if level(d) > level(m))
    assert not up, up


def test_no_import_circles():
    graph = import_graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
