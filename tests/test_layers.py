"""The import graph of `ablation` has no cycles and no import that runs back up the layers.

The layers and the arrows allowed between them are ablation/layers.py (docs/architecture.md draws
them). Imports inside functions count as much as those at module top. Reads the source with `ast`.
"""
from __future__ import annotations

import textwrap

from ablation.layers import (LAYERS, MAY_IMPORT, PACKAGE_DIR, Edge, cycles, import_edges, layer_of, modules, unassigned,
                             upward_imports)


def _edges_within(group: list[str], edges: list[Edge]) -> str:
    members = set(group)
    return "\n".join(f"    {e}" for e in edges if e.importer in members and e.imported in members and e.where != "type")


def test_every_module_has_a_layer():
    missing = unassigned()
    assert not missing, ("modules in no layer; add each to LAYERS in ablation/layers.py:\n  "
                         + "\n  ".join(missing))


def test_no_import_cycles():
    edges = import_edges()
    found = cycles(edges)
    assert not found, "import cycles (the imports inside each):\n" + "\n".join(
        f"  {' / '.join(g)}\n{_edges_within(g, edges)}" for g in found)


def test_no_import_runs_up_the_layers():
    up = upward_imports(import_edges())
    assert not up, "imports that run back up the layers (ablation/layers.py MAY_IMPORT):\n" + "\n".join(
        f"  [{layer_of(e.importer)} may not import {layer_of(e.imported)}] {e}" for e in up)


def test_stats_imports_nothing_above_core():
    bad = [e for e in import_edges() if layer_of(e.importer) == "stats" and layer_of(e.imported) not in ("core", "stats")]
    assert MAY_IMPORT["stats"] <= {"core"} and not bad, "\n".join(map(str, bad))


def test_the_checker_sees_function_level_cycles_and_upward_imports(tmp_path):
    """The checker itself: a made-up package whose only cycle and upward import sit inside functions."""
    pkg = tmp_path / "ablation"
    (pkg / "sim").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "spec.py": "def f():\n    from .plan import x\n",                       # core -> study, in a function
        "plan.py": "from . import spec\nx = 1\n",                                  # study -> core, at top
        "rollout.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .plan import x\n",
        "sim/__init__.py": "",
        "sim/env.py": "def g():\n    from ..rollout import y\n",                 # simulation -> evaluation
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    edges = import_edges(pkg)
    assert {(e.importer, e.imported, e.where) for e in edges} == {
        ("ablation.spec", "ablation.plan", "function"), ("ablation.plan", "ablation.spec", "top"),
        ("ablation.rollout", "ablation.plan", "type"), ("ablation.sim.env", "ablation.rollout", "function")}
    assert cycles(edges) == [["ablation.plan", "ablation.spec"]]   # the TYPE_CHECKING import is no cycle
    assert {(e.importer, e.imported) for e in upward_imports(edges)} == {
        ("ablation.spec", "ablation.plan"), ("ablation.rollout", "ablation.plan"), ("ablation.sim.env", "ablation.rollout")}
    assert set(modules(pkg)) == {"ablation", "ablation.spec", "ablation.plan", "ablation.rollout", "ablation.sim",
                                 "ablation.sim.env"}


def test_layers_name_real_modules():
    """A layer entry that matches no module is a typo or a module that moved: the layering would
    silently stop covering it."""
    names = {m.removeprefix("ablation.") for m in modules()} | {"ablation"}
    stale = [(layer, n) for layer, ns in LAYERS.items() for n in ns
             if not any(m == n or m.startswith(n + ".") for m in names)]
    assert not stale, f"LAYERS entries that match no module under {PACKAGE_DIR}: {stale}"


def test_allowed_arrows_chain_and_never_loop():
    """docs/architecture.md reads MAY_IMPORT as chained arrows: whatever a layer may import, it may
    also import what that layer may; and no layer may import itself back through another."""
    assert set(MAY_IMPORT) == set(LAYERS)
    for layer, allowed in MAY_IMPORT.items():
        assert layer not in allowed
        for lower in allowed:
            assert MAY_IMPORT[lower] <= allowed, f"{layer} may import {lower} but not all that {lower} may"
            assert layer not in MAY_IMPORT[lower], f"{layer} and {lower} may import each other"
