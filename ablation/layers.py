"""The package's layers, the imports allowed between them, and the import graph read from the source.

One place for the layering that docs/architecture.md describes and tests/test_layers.py enforces.
A module belongs to the layer of its longest matching name below (`sim` covers `sim.env`, but
`sim.libero_setup` is listed on its own). A layer may import its own modules and those of the layers
in MAY_IMPORT; anything else runs back up. The graph counts every `import` of an `ablation` module:
at module top, inside functions, and under `if TYPE_CHECKING:` (those run never, so they count for
the layers but not for cycles). Reads the files with `ast`; imports nothing of the package.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ablation"
PACKAGE_DIR = Path(__file__).resolve().parent

LAYERS: dict[str, tuple[str, ...]] = {
    # Specs, the action interface and the demo file: what every other layer builds on.
    # sim.libero_setup is LIBERO's install, config and task list (it imports only errors); the demo
    # file reader asks it for the suites' task names, so it sits here, not with the simulator.
    "core": ("ablation", "errors", "spec", "spec_model", "spec_load", "spec_plan", "representations", "rotation",
             "codec", "data", "episodes", "obs_features", "demo_evidence", "libero_tasks", "libero_file", "lerobot_file", "lerobot_video", "demo_io",
             "audit", "provenance", "locks", "layers", "sim.libero_setup", "rules", "noise", "diskfull",
             "frozen_norm", "pose_fit", "user_cache", "worker_procs", "host"),
    # Paired statistics on plain arrays: knows nothing of specs, runs or the simulator.
    "stats": ("stats",),
    # Networks, their loss and training, checkpoint bundles, the policy and RDT. openloop is here:
    # the trainer runs it on held-out demos at every eval step.
    "learning": ("model", "noise_schedule", "loss", "openloop", "train", "train_state", "train_metrics", "bundle",
                 "policy", "spec_data", "rdt"),
    # The LIBERO simulator: env factory, scripted expert, demo generation.
    "simulation": ("sim",),
    # Policies (or replayed demos) in the simulator: the rollout-policy contract and its policies
    # (built-in, a trained bundle's), episodes and their records, the env cache, the worker pool, Gate A.
    "evaluation": ("rollout_policy", "builtin_policies", "bundle_policy", "rollout_records", "rollout_episode",
                   "rollout_envs", "rollout", "rollout_pool", "gates"),
    # A study: runs and their stages, plans in looks, tuning, analysis, report, MLflow, the workdir.
    # stage is the contract of a run's stages; closed_loop and run_plots are what the stages call.
    # recorded_plan reads a finished plan back from MLflow, findings judges it, the report package presents it.
    "study": ("run", "stage", "stages", "closed_loop", "run_plots", "executors", "plan", "plan_record", "plan_eta", "tune", "pretrain", "analysis", "needs",
              "hypothesis", "verdicts", "correlation_verdicts", "calibration", "recorded_plan", "findings", "report", "tracking", "store_template", "workdir",
              "registry", "profiles", "arms", "plan_print", "plan_pretrain", "slot_signature"),
    # What a user types: the CLI, its commands and the doctor.
    "commands": ("cli", "commands", "doctor"),
}

MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "stats": frozenset({"core"}),
    "learning": frozenset({"core"}),
    "simulation": frozenset({"core"}),
    "evaluation": frozenset({"core", "learning", "simulation"}),
    "study": frozenset({"core", "stats", "learning", "simulation", "evaluation"}),
    "commands": frozenset({"core", "stats", "learning", "simulation", "evaluation", "study"}),
}


@dataclass(frozen=True)
class Edge:
    importer: str   # dotted module name, e.g. ablation.stages
    imported: str
    path: Path      # relative to the folder that holds the package
    line: int
    where: str      # "top" (module body), "function" (inside a def) or "type" (TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}  ({self.path}:{self.line}, {self.where})"


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is its __init__)."""
    out = {}
    for p in sorted(package_dir.rglob("*.py")):
        parts = list(p.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (longest listed prefix wins), None if it is in none."""
    rel = module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else module
    best, best_len = None, -1
    for layer, names in LAYERS.items():
        for n in names:
            if (rel == n or rel.startswith(n + ".")) and len(n) > best_len:
                best, best_len = layer, len(n)
    return best


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    if src.split(".")[0] != PACKAGE:
        return []
    # `from pkg import sub` imports the submodule; `from mod import name` the module.
    return [f"{src}.{a.name}" if f"{src}.{a.name}" in known else src for a in node.names]


def import_edges(package_dir: Path = PACKAGE_DIR) -> list[Edge]:
    """Every import of one of the package's modules by another, with where it sits."""
    known = modules(package_dir)
    edges = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        stack = [(n, "top") for n in tree.body]
        while stack:
            node, where = stack.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in dict.fromkeys(_targets(node, mod, path.name == "__init__.py", known)):  # once per statement
                    if t != mod:
                        edges.append(Edge(mod, t, path.relative_to(package_dir.parent), node.lineno, where))
                continue
            if isinstance(node, ast.If) and _is_type_checking(node):
                inner = "type"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "function"
            else:
                inner = where
            stack.extend((c, inner) for c in ast.iter_child_nodes(node))
    return sorted(edges, key=lambda e: (e.importer, e.line, e.imported))


def upward_imports(edges: list[Edge]) -> list[Edge]:
    """Imports whose target's layer the importer's layer may not import."""
    out = []
    for e in edges:
        a, b = layer_of(e.importer), layer_of(e.imported)
        if a is not None and b is not None and a != b and b not in MAY_IMPORT[a]:
            out.append(e)
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The import cycles: strongly connected groups of 2+ modules over the imports that run
    (module top and function bodies; TYPE_CHECKING imports never execute)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.where != "type":
            graph.setdefault(e.importer, set()).add(e.imported)
            graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is ~100 modules, recursion depth is no concern
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def unassigned(known: dict[str, Path] | None = None) -> list[str]:
    """Modules that no layer lists (a new module must be placed in LAYERS)."""
    return sorted(m for m in (known or modules()) if layer_of(m) is None)
