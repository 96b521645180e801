"""Size and shape of the `ablation` package: import cycles, upward imports, longest functions, module sizes.

    python scripts/code_stats.py [--top N]

Reads the source with `ast` (ablation/layers.py holds the layers and the graph); imports nothing else
of the package, so it runs on any checkout, before or after a refactor, and the two outputs compare.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablation.layers import PACKAGE_DIR, cycles, import_edges, layer_of, modules, unassigned, upward_imports  # noqa: E402


def function_lengths(known: dict[str, Path]) -> list[tuple[int, str]]:
    """(lines, module:qualified name) of every def, decorators and docstring included."""
    out = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))

        def walk(node, prefix):
            for c in ast.iter_child_nodes(node):
                if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([c.lineno] + [d.lineno for d in c.decorator_list])
                    out.append((c.end_lineno - start + 1, f"{mod}:{prefix}{c.name}"))
                    walk(c, f"{prefix}{c.name}.")
                elif isinstance(c, ast.ClassDef):
                    walk(c, f"{prefix}{c.name}.")
        walk(tree, "")
    return sorted(out, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    known = modules()
    edges = import_edges()
    where = {k: sum(e.where == k for e in edges) for k in ("top", "function", "type")}
    print(f"modules: {len(known)}; internal imports: {len(edges)} "
          f"({where['top']} at module top, {where['function']} inside functions, {where['type']} TYPE_CHECKING)")
    cyc = cycles(edges)
    print(f"import cycles: {len(cyc)}")
    for g in cyc:
        print("  " + " / ".join(m.removeprefix("ablation.") for m in g))
    up = upward_imports(edges)
    print(f"upward imports: {len(up)}")
    for e in up:
        print(f"  [{layer_of(e.importer)} -> {layer_of(e.imported)}] {e}")
    if unassigned(known):
        print(f"modules in no layer: {', '.join(unassigned(known))}")
    fl = function_lengths(known)
    print(f"functions: {len(fl)}; over 80 lines: {sum(n > 80 for n, _ in fl)}; longest {args.top}:")
    for n, name in fl[:args.top]:
        print(f"  {n:4d}  {name}")
    sizes = sorted(((len(p.read_text().splitlines()), p.relative_to(PACKAGE_DIR.parent)) for p in known.values()),
                   reverse=True)
    print(f"module lines: {sum(n for n, _ in sizes)} in {len(sizes)} modules; over 400 lines: "
          f"{sum(n > 400 for n, _ in sizes)}; largest {args.top}:")
    for n, p in sizes[:args.top]:
        print(f"  {n:4d}  {p}")


if __name__ == "__main__":
    main()
