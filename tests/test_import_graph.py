"""The package's modules import only downwards, with no circles.

The graph counts every relative import, the function-local and ``TYPE_CHECKING`` ones included. Each module
sits in one layer (docs/architecture.md); a module may import modules of its own layer or below, and the
graph must have no cycle.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "slowsde_jax"

LAYERS = [
    ("leaves", {"_version", "_precision", "_pattern", "_batching", "_small_linalg", "_memory", "brownian", "progress",
                "sharding", "compile_cache", "validation", "_io", "_structure", "_runtime_checks", "streaming"}),
    ("models", {"problems", "noise", "methods", "trajectory"}),
    ("math", {"geometry"}),
    ("shared", {"options", "inputs", "sweep"}),
    ("engines", {"discrete", "sde", "integrators", "slow_engine"}),
    ("analysis", {"observables", "comparison"}),
    ("app", {"experiments", "plotting", "config", "runs", "cli", "__main__", "__init__"}),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PKG.glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((PKG / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # from . import x: a module, or a name of the package face
                    deps |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slowsde_jax"):
                deps.add(node.module.split(".")[1] if "." in node.module else "__init__")
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("slowsde_jax."):
                    deps.add(arg.value.split(".")[1])
        graph[name] = deps - {name}
    return graph


def test_every_module_has_a_layer():
    modules = {p.stem for p in PKG.glob("*.py")}
    assert modules == set(LEVEL), {"without a layer": sorted(modules - set(LEVEL)),
                                   "gone": sorted(set(LEVEL) - modules)}


def test_no_upward_arrows():
    up = sorted(f"{m} ({LAYERS[LEVEL[m]][0]}) -> {d} ({LAYERS[LEVEL[d]][0]})"
                for m, deps in import_graph().items() for d in deps if LEVEL[d] > LEVEL[m])
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
