"""The package layout of docs/architecture.md holds: no import cycle, imports only go down the layers
of docs/layers.txt, and the checker itself catches both (on a small package made here)."""
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = [sys.executable, os.path.join(ROOT, "scripts", "import_cycles.py")]


def _run(*args):
    return subprocess.run([*CHECK, *args], capture_output=True, text=True, timeout=60)


def test_dgsnet_has_no_cycle_and_imports_only_go_down():
    proc = _run(os.path.join(ROOT, "dgsnet"), "--layers", os.path.join(ROOT, "docs", "layers.txt"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no import cycles" in proc.stdout and "no layering violations" in proc.stdout


def test_the_export_package_has_no_cycle_and_the_runtime_never_imports_the_exporter():
    proc = _run(os.path.join(ROOT, "export"), "--layers", os.path.join(ROOT, "docs", "layers.txt"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no import cycles" in proc.stdout and "no layering violations" in proc.stdout


def test_every_dgsnet_module_is_on_a_layer():
    """A new module must be placed in docs/layers.txt, or the layering check would skip it."""
    spec = importlib.util.spec_from_file_location("import_cycles", os.path.join(ROOT, "scripts", "import_cycles.py"))
    import_cycles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(import_cycles)
    graph = import_cycles.build_graph(os.path.join(ROOT, "dgsnet"))
    layers = [n for line in import_cycles.read_layers(os.path.join(ROOT, "docs", "layers.txt")) for n in line]
    loose = [m for m in graph if not any(m == n or m.startswith(n + ".") for n in layers if n != "dgsnet")
             and m != "dgsnet"]
    assert loose == [], f"modules on no line of docs/layers.txt: {loose}"


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "high.py").write_text("from pkg.low import a\n")
    (pkg / "low" / "a.py").write_text("import pkg.low.b\n")
    (pkg / "low" / "b.py").write_text("def f():\n    from pkg.low import a  # a lazy import still counts\n")
    (pkg / "low" / "c.py").write_text("from pkg import high\n")
    layers = tmp_path / "layers.txt"
    layers.write_text("pkg.high\npkg.low\n")
    proc = _run(str(pkg), "--layers", str(layers))
    assert proc.returncode == 1
    assert "cycle: " in proc.stdout and "pkg.low.a" in proc.stdout and "pkg.low.b" in proc.stdout
    assert "layering: pkg.low.c imports pkg.high" in proc.stdout
