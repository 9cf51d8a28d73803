#!/usr/bin/env python3
"""Import cycles (and, optionally, layering violations) among the modules of a package.

    python scripts/import_cycles.py [PACKAGE_DIR] [--layers FILE]

Reads the source with `ast` (nothing is imported) and builds the graph of
imports between the package's own modules. Every import statement counts,
including those inside functions (a lazy import is still a dependency).
`from pkg import name` depends on the module pkg.name when there is one, else
on pkg; importing a submodule is not counted as importing its parent packages.
Prints each cycle and exits 1 if there is any (or any layering violation).

--layers FILE: the layers, highest first, one per line; a line lists one or
more module names (a name covers its submodules), '#' starts a comment. A
module may import modules of its own layer or of lower ones (later lines),
not of higher ones. Modules no line covers are not checked.

    dgsnet.cli
    dgsnet.train
    dgsnet.surgery.objective dgsnet.surgery.layer
    dgsnet.surgery.backends
    dgsnet.surgery.reference
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_names(package_dir: str) -> dict[str, str]:
    """{module name: file} for every .py file (and compiled extension) under package_dir."""
    package_dir = os.path.abspath(package_dir)
    base = os.path.dirname(package_dir)
    found = {}
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith((".so", ".pyd")):  # a compiled extension: a module without imports
                parts = os.path.relpath(path, base).split(os.sep)
                found[".".join(parts[:-1] + [name.split(".")[0]])] = path
                continue
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(path, base)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(module: str, is_package: bool, tree: ast.AST, modules: set[str]) -> set[str]:
    """The package's own modules that `module` imports, anywhere in its body."""
    out = set()
    own_package = module if is_package else module.rpartition(".")[0]

    def nearest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = nearest(alias.name)
                if target:
                    out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                base = own_package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else nearest(source)
                if target:
                    out.add(target)
    out.discard(module)
    return out


def build_graph(package_dir: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    files = module_names(package_dir)
    names = set(files)
    graph = {}
    for module, path in files.items():
        if not path.endswith(".py"):
            graph[module] = set()
            continue
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        graph[module] = _imported(module, path.endswith("__init__.py"), tree, names)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected
    component of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, comps = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    comps.append(set(comp))
    return [_cycle_in(graph, comp) for comp in comps]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(comp)
    previous = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if child in comp and child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError("a strongly connected component always holds a cycle")


def read_layers(path: str) -> list[list[str]]:
    layers = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            names = line.split("#", 1)[0].split()
            if names:
                layers.append(names)
    return layers


def layer_violations(graph: dict[str, set[str]], layers: list[list[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a module imports one of a higher layer."""

    def level(module: str) -> int | None:
        best = None  # the longest matching name decides
        for depth, names in enumerate(layers):
            for name in names:
                if (module == name or module.startswith(name + ".")) and (
                        best is None or len(name) > len(best[1])):
                    best = (depth, name)
        return None if best is None else best[0]

    bad = []
    for module in sorted(graph):
        mine = level(module)
        if mine is None:
            continue
        for target in sorted(graph[module]):
            theirs = level(target)
            if theirs is not None and theirs < mine:
                bad.append((module, target))
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("package", nargs="?", default=os.path.join(ROOT, "dgsnet"),
                   help="the package folder (default: dgsnet/ of this repo)")
    p.add_argument("--layers", help="file of layers, highest first (see the module docstring)")
    args = p.parse_args(argv)
    graph = build_graph(args.package)
    cycles = find_cycles(graph)
    edges = sum(len(v) for v in graph.values())
    print(f"{len(graph)} modules, {edges} imports between them")
    for cycle in cycles:
        print("cycle: " + " -> ".join(cycle))
    bad = layer_violations(graph, read_layers(args.layers)) if args.layers else []
    for importer, imported in bad:
        print(f"layering: {importer} imports {imported}, a higher layer")
    if not cycles:
        print("no import cycles")
    if args.layers and not bad:
        print("no layering violations")
    return 1 if cycles or bad else 0


if __name__ == "__main__":
    sys.exit(main())
