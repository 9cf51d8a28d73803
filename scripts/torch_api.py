#!/usr/bin/env python3
"""Which torch / torchvision / triton names the project uses, and whether the oldest supported
release has them.

    python scripts/torch_api.py list                 every name used, with where
    python scripts/torch_api.py record [--out FILE]  under the OLD torch: what it has (a manifest)
    python scripts/torch_api.py check [--manifest FILE]
                                                     names the manifest's release lacks, or that it
                                                     does not cover (exit 1 when there are any)

Names are read from the source with `ast` (nothing of the project is imported): every dotted use
of an imported torch/torchvision/triton module (`torch.library.custom_op`, `F.scaled_dot_product_attention`
after `import torch.nn.functional as F`, `tl.dot` after `import triton.language as tl`) and every
`from torch.x import y`. Method calls on tensors and keyword arguments are not seen: the test suite
run under the old torch (scripts/torch-compat.sh) covers those.

The manifest (tests/torch_api_min.json, recorded under torch 2.11 by scripts/torch-compat.sh) holds,
for each module or class on the way to a used name, the names the old release has there
(`dir()`, submodules, config keys); other objects (functions, torch.ops namespaces) end the walk.
`check` needs no old torch: tests/test_torch_api.py runs it in CI, so a use of a torch API newer
than the oldest supported release fails there, naming the file and line.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import pkgutil
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = ("torch", "torchvision", "triton")
# What the old torch runs: the package, its exporter, the benchmarks, the scripts and the tests
# (the GPU check runs all of them on an image that has torch 2.11).
SCAN = ("dgsnet", "export", "bench", "scripts", "tests", "setup.py")
MANIFEST = os.path.join(ROOT, "tests", "torch_api_min.json")
# Recorded besides what the code uses today, so that a first use of these needs no new recording
# (which needs the old torch installed): torch's public modules a training/kernel project reaches for.
EXTRA = tuple(f"torch.{m}" for m in (
    "accelerator", "amp", "autograd", "autograd.function", "backends.cuda", "backends.cudnn",
    "backends.mha", "backends.mkldnn", "backends.opt_einsum", "compiler", "cuda.amp", "cuda.graphs",
    "distributed", "distributed.checkpoint", "distributed.device_mesh", "distributed.fsdp",
    "distributed.tensor", "export", "fft", "func", "library", "linalg", "nn", "nn.attention",
    "nn.functional", "nn.init", "nn.parallel", "nn.utils", "nn.utils.parametrize", "onnx", "optim",
    "optim.lr_scheduler", "overrides", "profiler", "random", "special", "testing", "utils",
    "utils.checkpoint", "utils.data", "utils.dlpack", "utils.hooks", "version")) + ("triton.language",)


def _python_files(paths):
    for path in paths:
        if os.path.isfile(path):
            yield path
            continue
        for folder, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def _library(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in LIBRARIES


def _chain(node: ast.AST) -> list[str] | None:
    """['F', 'scaled_dot_product_attention'] for F.scaled_dot_product_attention; None when the
    innermost value is not a plain name (a call, a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def uses_in_source(source: str, filename: str = "<string>") -> dict[str, list[int]]:
    """{dotted name: [line, ...]} of the library names a module's source uses; a keyword passed to
    one of them is listed as 'name(keyword=)'."""
    tree = ast.parse(source, filename)
    alias: dict[str, str] = {}  # local name -> dotted library path; one scope per file is enough
    found: dict[str, list[int]] = {}

    def use(path, line):
        found.setdefault(path, []).append(line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _library(a.name):
                    use(a.name, node.lineno)
                    if a.asname:
                        alias[a.asname] = a.name
                    else:  # `import torch.nn.functional` binds `torch`
                        alias[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _library(node.module):
            for a in node.names:
                if a.name != "*":
                    use(f"{node.module}.{a.name}", node.lineno)
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
    # Only the longest chain of each expression: its prefixes are checked on the way.
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts = _chain(node)
            if parts and parts[0] in alias:
                use(".".join([alias[parts[0]], *parts[1:]]), node.lineno)
        elif isinstance(node, ast.Call):  # keywords: torch.onnx.export(..., dynamo=True)
            parts = _chain(node.func)
            if parts and parts[0] in alias:
                for kw in node.keywords:
                    if kw.arg:
                        use(f"{'.'.join([alias[parts[0]], *parts[1:]])}({kw.arg}=)", node.lineno)
    return found


def used_names(paths=None) -> dict[str, list[str]]:
    """{dotted name: ['file:line', ...]} over the project's files (SCAN)."""
    paths = paths or [os.path.join(ROOT, p) for p in SCAN]
    out: dict[str, list[str]] = {}
    for path in _python_files(paths):
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
        rel = os.path.relpath(path, ROOT)
        for name, lines in uses_in_source(source, path).items():
            out.setdefault(name, []).extend(f"{rel}:{n}" for n in lines)
    return dict(sorted(out.items()))


def _names_at(obj) -> list[str] | None:
    """What can follow `obj.` : a module's or class's attributes, a package's submodules (imported
    or not), a torch config module's keys; None for anything else (the walk stops there)."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj)):
        return None
    kind = type(obj)
    dynamic = inspect.ismodule(obj) and kind is not types.ModuleType and "__getattr__" in vars(kind)
    if dynamic and not isinstance(getattr(obj, "_config", None), dict):
        return None  # names made on first access (torch.ops.<namespace>): nothing to list
    names = set(dir(obj))
    if inspect.ismodule(obj):
        if kind is not types.ModuleType:  # a module subclass's properties (torch.backends.cudnn.allow_tf32)
            names |= set(dir(kind))
        names |= {m.name for m in pkgutil.iter_modules(getattr(obj, "__path__", None) or [])}
        config = getattr(obj, "_config", None)  # torch._dynamo.config and friends hide their keys
        if isinstance(config, dict):
            names |= set(config)
    return sorted(names)


def _resolve(obj, prefix: str, name: str):
    try:
        return getattr(obj, name)
    except AttributeError:
        if inspect.ismodule(obj):  # a submodule not imported yet
            try:
                return importlib.import_module(f"{prefix}.{name}")
            except ImportError:
                pass
        raise


def record(names) -> dict:
    """The manifest of the libraries installed here, for the given dotted names."""
    table: dict[str, list[str] | None] = {}
    signatures: dict[str, list[str] | None] = {}
    versions = {}
    for name in names:
        if name.endswith("=)"):
            called = name.partition("(")[0]
            if called not in signatures:
                signatures[called] = _parameters(called)
            continue
        parts = name.split(".")
        try:
            obj = importlib.import_module(parts[0])
        except ImportError as exc:
            raise SystemExit(f"record: cannot import {parts[0]} ({exc}); install the old release's "
                             f"torch, torchvision and triton first (scripts/torch-compat.sh does)")
        versions[parts[0]] = getattr(obj, "__version__", "?")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in table:
                names_here = _names_at(obj)
                if names_here is not None or i < len(parts):  # a function at the end tells nothing
                    table[prefix] = names_here
            if prefix not in table:
                break
            if table[prefix] is None or i == len(parts) or parts[i] not in table[prefix]:
                break
            try:
                obj = _resolve(obj, prefix, parts[i])
            except Exception:  # listed but not loadable here (an optional backend): stop
                table.setdefault(f"{prefix}.{parts[i]}", None)
                break
    return {"versions": dict(sorted(versions.items())), "python": sys.version.split()[0],
            "names": dict(sorted(table.items())), "keywords": dict(sorted(signatures.items()))}


def _parameters(name: str) -> list[str] | None:
    """The keywords `name` accepts here; None when it takes **kwargs, has no readable signature
    or cannot be reached (a dynamic name; a missing one is reported by its name)."""
    parts = name.split(".")
    try:
        obj = importlib.import_module(parts[0])
        for i in range(1, len(parts)):
            obj = _resolve(obj, ".".join(parts[:i]), parts[i])
        params = inspect.signature(obj).parameters.values()
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return sorted(p.name for p in params if p.kind is not inspect.Parameter.POSITIONAL_ONLY)


def check(used: dict[str, list[str]], manifest: dict) -> list[str]:
    """One line per name the manifest's release lacks or does not cover; [] when all is well."""
    table = manifest["names"]
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    keywords = manifest.get("keywords", {})
    problems = []
    for name, where in used.items():
        if name.endswith("=)"):
            called, _, kw = name[:-2].partition("(")
            if called not in keywords:
                problems.append(f"{name} ({where[0]}): {called}'s keywords are not in the manifest; "
                                f"record them under the oldest torch: bash scripts/torch-compat.sh --record")
            elif keywords[called] is not None and kw not in keywords[called]:
                problems.append(f"{name} ({where[0]}): {called} takes no keyword {kw}= in {versions}; "
                                f"guard it or raise the minimum in pyproject.toml")
            continue
        parts = name.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in table:
                problems.append(f"{name} ({where[0]}): {prefix} is not in the manifest; record it "
                                f"under the oldest torch: bash scripts/torch-compat.sh --record")
                break
            if table[prefix] is None:
                break
            if parts[i] not in table[prefix]:
                problems.append(f"{name} ({where[0]}): not in {versions}; guard it with a fallback "
                                f"(hasattr / try-except) or raise the minimum in pyproject.toml")
                break
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every library name the project uses, with where")
    r = sub.add_parser("record", help="write the manifest of the libraries installed here")
    r.add_argument("--out", default=MANIFEST)
    c = sub.add_parser("check", help="names the manifest's release lacks (exit 1 when any)")
    c.add_argument("--manifest", default=MANIFEST)
    args = p.parse_args(argv)
    used = used_names()
    if args.cmd == "list":
        for name, where in used.items():
            print(f"{name}  {where[0]}" + (f" (+{len(where) - 1})" if len(where) > 1 else ""))
        return 0
    if args.cmd == "record":
        from dgsnet.fileio import atomic_write

        manifest = record({**used, **{m: [] for m in EXTRA}})
        atomic_write(args.out, json.dumps(manifest, indent=0, sort_keys=True) + "\n")
        print(f"recorded {len(manifest['names'])} modules/classes of "
              f"{', '.join(f'{k} {v}' for k, v in manifest['versions'].items())} to {args.out}")
        return 0
    try:
        with open(args.manifest, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except OSError as exc:
        raise SystemExit(f"check: cannot read the manifest {args.manifest} ({exc.strerror}); "
                         "record it with bash scripts/torch-compat.sh --record")
    problems = check(used, manifest)
    for line in problems:
        print(line)
    print(f"{len(used)} names checked against "
          f"{', '.join(f'{k} {v}' for k, v in manifest['versions'].items())}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
