"""Packaging: pyproject's ranges and the lock files agree, the extras keep torch and the two
onnxruntime flavours apart, and a core install runs every `--help` without torch."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CORE = PROJECT["project"]["dependencies"]
EXTRAS = PROJECT["project"]["optional-dependencies"]
ORT, ORT_GPU = "onnxruntime", "onnxruntime-gpu"
TORCH_STACK = {"torch", "torchvision", "open-clip-torch", "triton"}


def _expand(lines) -> list[Requirement]:
    """Requirements, with dgsnet's own extras (`dgsnet[train,dev]`) replaced by their contents."""
    out = []
    for line in lines:
        req = Requirement(line)
        if canonicalize_name(req.name) == "dgsnet":
            out += _expand([d for extra in sorted(req.extras) for d in EXTRAS[extra]])
        else:
            out.append(req)
    return out


def _names(lines) -> set[str]:
    return {canonicalize_name(r.name) for r in _expand(lines)}


def _lock(name: str) -> dict[str, str]:
    """{package: pinned version} of a requirements file, following `-r` includes; every line must pin
    exactly one version."""
    pins = {}
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            pins.update(_lock(line[3:].strip()))
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


LOCKS = {"requirements-cpu.txt": "runtime", "requirements-gpu.txt": "gpu"}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_satisfies_its_range_and_every_range_is_pinned(lock):
    pins = _lock(lock)
    # the lock of one host: the core, every extra but the other onnxruntime flavour
    declared = _expand(CORE + [d for extra, deps in EXTRAS.items() if extra not in ("runtime", "gpu", "all")
                               for d in deps] + EXTRAS[LOCKS[lock]])
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml) is not pinned in {lock}"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{lock} pins {name}=={pins[name]}, outside pyproject.toml's range {req}"


def test_the_locks_never_hold_both_onnxruntimes():
    assert ORT not in _lock("requirements.txt") and ORT_GPU not in _lock("requirements.txt")
    assert ORT in _lock("requirements-cpu.txt") and ORT_GPU not in _lock("requirements-cpu.txt")
    assert ORT_GPU in _lock("requirements-gpu.txt") and ORT not in _lock("requirements-gpu.txt")


def test_extras_keep_torch_and_the_onnxruntime_flavours_apart():
    assert not _names(CORE) & (TORCH_STACK | {ORT, ORT_GPU}), "the core install must stay torch- and ort-free"
    assert {ORT_GPU} <= _names(EXTRAS["gpu"]) and ORT not in _names(EXTRAS["gpu"])
    assert ORT in _names(EXTRAS["runtime"]) and "torch" in _names(EXTRAS["train"])
    for extra, deps in EXTRAS.items():
        assert not {ORT, ORT_GPU} <= _names(deps), f"[{extra}] pulls both onnxruntime and onnxruntime-gpu"
    for tool in ("pytest", "scikit-image"):
        holders = {extra for extra, deps in EXTRAS.items() if tool in _names(deps)} - {"all"}
        assert holders == {"dev"} and tool not in _names(CORE), f"{tool} is in {holders or 'the core'}"
    assert _names(EXTRAS["all"]) == _names(EXTRAS["train"] + EXTRAS["runtime"] + EXTRAS["dev"])


def test_building_never_downloads_torch_and_the_scripts_are_declared():
    assert not {canonicalize_name(Requirement(r).name) for r in PROJECT["build-system"]["requires"]} & TORCH_STACK
    assert PROJECT["project"]["scripts"] == {"dgsnet": "dgsnet.cli:main", "dgsnet-predict": "dgsnet_export.cli:main",
                                             "dgsnet-serve": "dgsnet_export.serve.cli:main"}
    assert PROJECT["project"]["dynamic"] == ["version"]


def test_each_missing_module_names_the_extra_that_installs_it():
    """dgsnet.extras' table against pyproject.toml, through the installed distributions' own file lists."""
    from importlib.metadata import packages_distributions

    from dgsnet.extras import PROVIDERS

    owners = packages_distributions()
    for module, (_, extra) in PROVIDERS.items():
        dists = {canonicalize_name(d) for d in owners.get(module, ())}
        assert dists, f"{module} is not installed here"
        assert dists & _names(EXTRAS[extra]), f"{module} ({dists}) is not in [{extra}]"


def test_every_command_declares_what_it_needs():
    from dgsnet.cli import _NEEDS, build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= set(_NEEDS), f"add {sorted(commands - set(_NEEDS))} to _NEEDS in dgsnet/cli/__init__.py"


def test_the_convert_parser_default_mirrors_the_published_alpha():
    from dgsnet.cli.convert import PUBLISHED_ALPHA as parser_default
    from dgsnet.convert.lora import PUBLISHED_ALPHA

    assert parser_default == PUBLISHED_ALPHA


# ---------------------------------------------------------------- without torch, here: modules hidden

HIDDEN = ("torch", "torchvision", "open_clip", "triton", "safetensors", "onnx", "onnxscript", "onnxruntime",
          "matplotlib", "tqdm", "skimage", "scipy")
HIDE = "import sys\nfor m in {hidden!r}: sys.modules[m] = None  # as if not installed\n"
# Runs `dgsnet.cli` or `dgsnet_export.cli` (argv[1]) with argv[2:].
RUN_MAIN = "import importlib\nsys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[2:]))\n"
# `--help` of dgsnet, of each command named in argv[1:] and of dgsnet-predict; then which hidden
# modules got imported anyway.
ALL_HELP = """
import contextlib, io
from dgsnet.cli import main
from dgsnet_export.cli import main as predict_main
for run, argv in [(main, ['--help'])] + [(main, [c, '--help']) for c in sys.argv[1:]] + [(predict_main, ['--help'])]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            run(argv)
        except SystemExit as stop:
            assert stop.code == 0, (argv, stop.code)
print(sorted(m for m in sys.modules if m.split('.')[0] in {hidden!r} and sys.modules[m] is not None))
"""


def _without(hidden, module, *args):
    code = HIDE.format(hidden=tuple(hidden)) + RUN_MAIN
    return subprocess.run([sys.executable, "-c", code, module, *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_every_help_runs_without_the_extras():
    from dgsnet.cli import build_parser

    commands = sorted(build_parser()._subparsers._group_actions[0].choices)
    code = HIDE.format(hidden=HIDDEN) + ALL_HELP.format(hidden=HIDDEN)
    proc = subprocess.run([sys.executable, "-c", code, *commands], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_a_command_without_its_extra_stops_with_one_line_naming_it(tmp_path):
    proc = _without(("torch",), "dgsnet.cli", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr == "dgsnet train needs PyTorch: pip install 'dgsnet[train]'\n"
    assert not (tmp_path / "run").exists()
    proc = _without(HIDDEN, "dgsnet.cli", "demo", "--out", str(tmp_path / "demo"))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "pip install 'dgsnet[train,runtime,dev]'" in proc.stderr
    # eval of an .onnx needs no torch, but its charts need matplotlib
    proc = _without(("torch", "matplotlib"), "dgsnet.cli", "eval", "--ckpt", str(tmp_path / "m.onnx"),
                    "--data", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (2, "dgsnet eval needs matplotlib: pip install 'dgsnet[plots]'\n")
    proc = _without(("torch",), "dgsnet.cli", "eval", "--ckpt", str(tmp_path), "--data", str(tmp_path),
                    "--no-plot")
    assert (proc.returncode, proc.stderr) == (2, "dgsnet eval needs PyTorch: pip install 'dgsnet[train]'\n")
    proc = _without(("onnxruntime",), "dgsnet_export.cli", str(tmp_path / "m.onnx"), str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr == ("dgsnet-predict needs onnxruntime: pip install 'dgsnet[runtime]' "
                           "(or [gpu] instead of [runtime] on a GPU host)\n")
    # dgsnet serve: the web stack ([serve]) and an engine, torch never
    for module in ("dgsnet.cli", "dgsnet_export.serve.cli"):
        args = ("serve",) if module == "dgsnet.cli" else ()
        proc = _without(("starlette", "torch"), module, *args, str(tmp_path / "m.onnx"))
        prog = "dgsnet serve" if args else "dgsnet-serve"
        assert (proc.returncode, proc.stderr) == (2, f"{prog} needs Starlette: pip install 'dgsnet[serve]'\n")


# Runs setup.py with setuptools.setup replaced by a recorder of its arguments (nothing is built);
# prints the extensions it was given.
SETUP = """import runpy, sys, setuptools
if sys.argv[1] == "hide":
    sys.modules["torch"] = None  # as if not installed
given = {}
setuptools.setup = lambda **kw: given.update(kw)
runpy.run_path("setup.py", run_name="__main__")
print([e.name for e in given.get("ext_modules", [])])
"""


@pytest.mark.parametrize("mode, torch, out", [("auto", "hide", "[]"), ("none", "keep", "[]"),
                                              ("cpu", "keep", "['dgsnet._C']"), ("auto", "keep", "['dgsnet._C']")])
def test_setup_builds_the_extension_only_with_torch(mode, torch, out):
    env = dict(os.environ, DGSNET_BUILD=mode)
    proc = subprocess.run([sys.executable, "-c", SETUP, torch], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == out


def test_setup_asked_for_the_extension_without_torch_says_what_to_install():
    env = dict(os.environ, DGSNET_BUILD="cpu")
    proc = subprocess.run([sys.executable, "-c", SETUP, "hide"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert proc.returncode != 0
    assert "DGSNET_BUILD=cpu needs torch in the build environment" in proc.stderr


# ---------------------------------------------------------------- a fresh virtual environment

def _source_copy(dest: Path) -> Path:
    """The files git would commit (tracked, and new ones it does not ignore), so the build leaves
    nothing in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
def test_a_fresh_core_install_runs_without_torch_and_runtime_scores(tmp_path, fp32_export, photo_dir):
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the project's files")
    src = _source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DGSNET_BUILD")}
    timings = {}

    def run(*argv, ok=True):
        start = time.perf_counter()
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, env=env,
                              cwd=tmp_path)
        step = " ".join(Path(str(a)).name for a in (argv if argv[0] != sys.executable else argv[-1:]))[:50]
        timings[step] = timings.get(step, 0.0) + round(time.perf_counter() - start, 1)
        if ok:
            assert proc.returncode == 0, f"{argv}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        return proc

    bin_ = venv / "bin"
    # No pip inside the venv (ensurepip costs ~15 s): this interpreter's pip installs into it.
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    pip = [sys.executable, "-m", "pip", "--python", bin_ / "python", "install", "--quiet"]
    # Built once (what `pip install SRC` builds), installed twice: without extras, then with [runtime].
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("dgsnet-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), f"{wheel.name}: the build compiled dgsnet._C"
    run(*pip, wheel)
    for argv in (["dgsnet", "--help"], ["dgsnet", "train", "--help"], ["dgsnet-predict", "--help"]):
        run(bin_ / argv[0], *argv[1:])
    for module in ("torch", "dgsnet._C", "onnxruntime"):
        assert run(bin_ / "python", "-c", f"import {module}", ok=False).returncode != 0, f"{module} is installed"
    proc = run(bin_ / "dgsnet", "train", "--data", "x", "--out", "y", ok=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "needs PyTorch" in proc.stderr and "pip install 'dgsnet[train]'" in proc.stderr
    proc = run(bin_ / "dgsnet-predict", fp32_export[0], photo_dir, ok=False)
    assert proc.returncode == 2 and "pip install 'dgsnet[runtime]'" in proc.stderr, proc.stderr

    run(*pip, f"{wheel}[runtime]")
    out = tmp_path / "preds.jsonl"
    run(bin_ / "dgsnet-predict", fp32_export[0], photo_dir, "--out", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(list(photo_dir.iterdir())) and all(0.0 <= r["probability"] <= 1.0 for r in records)
    assert run(bin_ / "python", "-c", "import torch", ok=False).returncode != 0
    print("fresh venv timings (s):", json.dumps(timings))
