"""The driver of scripts/gpu-check.sh: the steps, their time limits, and summary.md.

scripts/gpu-check.sh's header says what the host needs and is this script's --help epilog. Only
the standard library is imported at the top: the install step runs before anything else is
importable. Internal subcommands (_install, _env, _build) are the steps that run this file again
under the host's Python, each as its own process with its own time limit.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.abspath(__file__)
SHELL = os.path.join(ROOT, "scripts", "gpu-check.sh")

# (distribution, import name, needed by) of everything dgsnet, its benchmarks and its tests import at
# run time, with what those import in turn: measured from sys.modules after importing them in the
# project's environment. The install step uses --no-deps (pip --target would otherwise reinstall
# torch), so this list has to be the whole closure. torch, triton and their own dependencies are the
# image's. "needed by" () marks what dgsnet, the benchmarks, the tests or the build import themselves;
# otherwise the distributions whose import pulls it in: such an entry is required only when one of
# those is missing too (its wheel is installed and needs it). A host whose huggingface_hub imports
# never needs the httpx2 / httpcore2 / truststore that this environment's huggingface_hub 2 uses
# (huggingface_hub 1, the GPU image's, uses httpx).
_HUB = ("huggingface_hub",)
NEEDED = [
    # dgsnet and open_clip
    ("numpy", "numpy", ()), ("pillow", "PIL", ()), ("pyyaml", "yaml", ()), ("packaging", "packaging", ()),
    ("typing_extensions", "typing_extensions", ("huggingface_hub", "onnxscript", "onnx")),
    ("filelock", "filelock", _HUB), ("tqdm", "tqdm", ()), ("safetensors", "safetensors", ()),
    ("open_clip_torch", "open_clip", ()), ("ftfy", "ftfy", ("open_clip_torch",)),
    ("wcwidth", "wcwidth", ("ftfy",)), ("regex", "regex", ("open_clip_torch",)),
    ("timm", "timm", ("open_clip_torch",)), ("torchvision", "torchvision", ()),
    ("huggingface_hub", "huggingface_hub", ()), ("httpx2", "httpx2", _HUB), ("httpcore2", "httpcore2", _HUB),
    ("truststore", "truststore", ("httpx2",)),
    # the serve tests' client (imported when pytest collects them), and the HTTP stack's own
    ("httpx", "httpx", ()), ("httpcore", "httpcore", ("httpx",)), ("certifi", "certifi", ("httpx",)),
    ("h11", "h11", ("httpcore", "httpcore2")), ("anyio", "anyio", ("httpx", "httpx2")),
    ("idna", "idna", ("httpx", "httpx2", "anyio")),
    # building dgsnet._C
    ("setuptools", "setuptools", ()), ("ninja", "ninja", ()),
    # the benchmarks' plots and photos, the tests
    ("matplotlib", "matplotlib", ()), ("contourpy", "contourpy", ("matplotlib",)),
    ("cycler", "cycler", ("matplotlib",)), ("fonttools", "fontTools", ("matplotlib",)),
    ("kiwisolver", "kiwisolver", ("matplotlib",)), ("pyparsing", "pyparsing", ("matplotlib",)),
    ("python-dateutil", "dateutil", ("matplotlib",)), ("scikit-image", "skimage", ()), ("scipy", "scipy", ()),
    ("imageio", "imageio", ("scikit-image",)), ("tifffile", "tifffile", ("scikit-image",)),
    ("networkx", "networkx", ("scikit-image",)), ("lazy-loader", "lazy_loader", ("scikit-image",)),
    ("onnx", "onnx", ()), ("protobuf", "google.protobuf", ()), ("onnxscript", "onnxscript", ()),
    ("onnx-ir", "onnx_ir", ("onnxscript",)), ("ml_dtypes", "ml_dtypes", ("onnx", "onnxscript", "onnx-ir")),
    ("onnxruntime", "onnxruntime", ()), ("pytest", "pytest", ()), ("iniconfig", "iniconfig", ("pytest",)),
    ("pluggy", "pluggy", ("pytest",)), ("pygments", "pygments", ("pytest",)),
]
# What the GPU image (the device tool's H100 / H200 'cuda' image: Python 3.12, torch 2.11, its
# package list in the device notes) lacks of NEEDED: the default of --wheel-list, small enough to
# carry to such a host. --wheel-list all prints every distribution of NEEDED.
IMAGE_LACKS = ("open_clip_torch", "ftfy", "wcwidth")
# Whole imports the steps rely on: a module missing deep inside one shows up here by name.
PROBES = ["torch", "triton", "numpy", "PIL", "yaml", "safetensors", "open_clip", "torchvision", "timm",
          "matplotlib.pyplot", "skimage.data", "scipy.ndimage", "onnx", "onnxruntime", "onnxscript",
          "pytest"]
# torchvision is built for one torch release: it goes into the wheel folder by hand (README).
TORCH_BOUND = {"torchvision"}

# The training run goes before bench_step: when the 8-minute budget runs short, the longest and least
# essential step (timings of the whole step, the loops) is the one cut.
STEPS = ("install", "env", "build", "pytest", "bench_surgery", "bench_layerwise", "train", "bench_step")
# Seconds per step: the GPU check (8 minutes on one H100 with --budget 480), --full (the
# benchmarks' reported sweeps), and --dry-run-cpu (a 2-core CI machine).
LIMITS = {
    "gpu": {"install": 45, "env": 45, "build": 150, "pytest": 180, "bench_surgery": 60,
            "bench_layerwise": 45, "bench_step": 120, "train": 75},
    "full": {"install": 60, "env": 60, "build": 300, "pytest": 600, "bench_surgery": 600,
             "bench_layerwise": 300, "bench_step": 1200, "train": 300},
    "cpu": {"install": 60, "env": 60, "build": 600, "pytest": 300, "bench_surgery": 180,
            "bench_layerwise": 180, "bench_step": 300, "train": 180},
}
RESULTS = {"bench_surgery": ["bench_surgery.json"], "bench_layerwise": ["bench_layerwise.json"],
           "bench_step": ["bench_step.json"], "train": ["bench_train_gpu.json"]}
RESERVE = 10  # seconds kept for summary.md when a budget is set
JUNIT = "pytest_gpu.xml"
# Seconds between timeout(1)'s first signal and its SIGKILL. pytest gets SIGINT first, so that it
# writes its junit XML and its summary on the way out.
KILL_AFTER = 15


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- install (its own process)

def wheel_index(folder: str) -> dict[str, list[str]]:
    """{canonical distribution name: [wheel paths]} of the .whl files in `folder`."""
    found: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".whl"):
            found.setdefault(canonical(name.split("-")[0]), []).append(os.path.join(folder, name))
    return found


def torch_pin(wheel: str) -> str | None:
    """The exact torch version a wheel requires (`Requires-Dist: torch==X`), or None."""
    with zipfile.ZipFile(wheel) as zf:
        meta = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        if not meta:
            return None
        for line in zf.read(meta[0]).decode("utf-8", "replace").splitlines():
            m = re.match(r"Requires-Dist:\s*torch\s*==\s*([0-9][^\s;,]*)", line)
            if m:
                return m.group(1)
    return None


def base_version(version: str) -> str:
    return version.split("+")[0]


def missing_modules(needed=NEEDED) -> list[tuple[str, str]]:
    """The (distribution, module) pairs of `needed` whose module is not importable."""
    importlib.invalidate_caches()
    missing = []
    for dist, module, *_ in needed:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):  # a parent package missing, or a broken one
            spec = None
        if spec is None:
            missing.append((dist, module))
    return missing


def required(missing: list[tuple[str, str]], needed=NEEDED) -> list[tuple[str, str]]:
    """The pairs of `missing` that this host needs: what dgsnet, the benchmarks, the tests or the build
    import themselves, and a dependency only where a distribution that imports it is required and
    missing too (it is installed from a wheel, without its dependencies)."""
    parents = {dist: (rest[0] if rest else ()) for dist, _, *rest in needed}
    gone = {dist for dist, _ in missing}
    need: set[str] = set()
    grew = True
    while grew:
        grew = False
        for dist in gone - need:
            by = parents.get(dist, ())
            if not by or any(p in need for p in by):
                need.add(dist)
                grew = True
    return [(d, m) for d, m in missing if d in need]


def pip_install(site: str, wheels: str, dists: list[str]) -> tuple[list[str], dict[str, str]]:
    """Installs `dists` from the wheel folder into `site` (no index, no dependencies); returns
    (installed, {dist: why it failed}). One pip call, then one per distribution if it failed, so
    that a bad wheel is named."""
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", wheels,
            "--target", site, "--disable-pip-version-check", "--no-warn-script-location", "--quiet"]
    if not dists:
        return [], {}
    if subprocess.run(base + dists).returncode == 0:
        return list(dists), {}
    installed, failed = [], {}
    for dist in dists:
        proc = subprocess.run(base + [dist], capture_output=True, text=True)
        if proc.returncode == 0:
            installed.append(dist)
        else:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            failed[dist] = lines[-1] if lines else f"pip exited with {proc.returncode}"
    return installed, failed


def probe_imports(modules=PROBES) -> dict[str, str]:
    """{module: error} for each module that does not import (any exception: torchvision raises
    RuntimeError on a torch mismatch)."""
    importlib.invalidate_caches()
    errors = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 (every failure is reported by name)
            missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
            errors[module] = (f"needs module {missing!r}, which is not installed" if missing
                              else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return errors


def plan_install(missing: list[tuple[str, str]], wheels: str,
                 host_torch: str | None) -> tuple[list[str], list[str], dict[str, str]]:
    """(to install, without a wheel, {refused: why}) for the missing (distribution, module) pairs:
    a torch-bound wheel (torchvision) pinned to another torch than the host's is refused."""
    index = wheel_index(wheels)
    todo, no_wheel, refused = [], [], {}
    for dist, _ in missing:
        found = index.get(canonical(dist), [])
        if not found:
            no_wheel.append(dist)
            continue
        pins = {torch_pin(w) for w in found} - {None}
        if dist in TORCH_BOUND and host_torch and pins and host_torch not in {base_version(v) for v in pins}:
            refused[dist] = (f"the wheel(s) in {wheels} need torch=={', '.join(sorted(pins))}, this host has "
                             f"torch {host_torch}: put the {dist} build made for torch {host_torch} there "
                             "(README, 'Validating on a GPU')")
            continue
        todo.append(dist)
    return todo, no_wheel, refused


def cmd_install(argv) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py _install")
    p.add_argument("--site", required=True)
    p.add_argument("--wheels", default=None)
    args = p.parse_args(argv)
    absent = missing_modules()
    missing = required(absent)
    print(f"{len(NEEDED) - len(absent)} of {len(NEEDED)} listed modules already importable "
          f"(Python {sys.version.split()[0]}, {sys.executable})")
    unneeded = [d for d, m in absent if (d, m) not in missing]
    if unneeded:
        print("not needed here (only the missing versions of what imports them would need them): "
              + ", ".join(unneeded))
    installed, failed = [], {}
    if missing and args.wheels:
        host_torch = None
        try:
            host_torch = base_version(importlib.metadata.version("torch"))
        except importlib.metadata.PackageNotFoundError:
            pass
        todo, _, failed = plan_install(missing, args.wheels, host_torch)
        print(f"installing {len(todo)} wheel(s) from {args.wheels} into {args.site} (no index, no dependencies): "
              + (", ".join(todo) or "none"))
        os.makedirs(args.site, exist_ok=True)
        got, bad = pip_install(args.site, args.wheels, todo)
        installed += got
        failed.update(bad)
        if args.site not in sys.path:
            sys.path.insert(0, args.site)
    still = required(missing_modules())
    errors = probe_imports()
    for dist, why in failed.items():
        print(f"not installed: {dist}: {why}")
    if still:
        where = f"no wheel in {args.wheels}" if args.wheels else "no --wheels DIR given"
        print(f"missing ({where}): " + ", ".join(f"{d} (import {m})" for d, m in still))
    for module, why in errors.items():
        print(f"import {module} fails: {why}")
    parts = ["every needed module present" if not missing else
             f"installed {len(installed)} of {len(missing)} missing" if args.wheels else
             f"{len(missing)} missing, no --wheels"]
    if still:
        parts.append("missing " + ", ".join(d for d, _ in still))
    if errors:
        parts.append("import fails: " + ", ".join(errors))
    print("NOTE: " + "; ".join(parts))
    return 1 if (still or errors or failed) else 0


# ---------------------------------------------------------------- env (its own process)

def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with: CUDA_HOME / CUDA_PATH, /usr/local/cuda, or the folder above the
    nvcc on PATH, the first with bin/nvcc and include/cuda_runtime.h (an nvcc on PATH may be a wrapper
    script, e.g. /usr/local/bin/nvcc, whose parent holds no headers)."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    homes = [h for h in homes if h and os.access(os.path.join(h, "bin", "nvcc"), os.X_OK)]
    whole = [h for h in homes if os.path.isfile(os.path.join(h, "include", "cuda_runtime.h"))]
    return (whole or homes or [None])[0]


def find_nvcc() -> str | None:
    home = find_cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run_out(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_env(argv) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py _env")
    p.add_argument("--out", required=True)
    p.add_argument("--need-cuda", action="store_true")
    args = p.parse_args(argv)
    import platform

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "DGSNET_TRITON_PINNED": os.environ.get("DGSNET_TRITON_PINNED")}
    for dist in ("torch", "triton", "torchvision", "open_clip_torch", "onnxruntime", "onnx", "numpy"):
        info[dist] = _version(dist)
    nvcc = find_nvcc()
    info["nvcc"] = nvcc
    text = _run_out([nvcc, "--version"]) if nvcc else None
    info["nvcc_version"] = (re.findall(r"release ([0-9.]+)", text or "") or [None])[0]
    info["driver"] = _run_out(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update({"device": props.name, "capability": f"{props.major}.{props.minor}",
                     "device_memory_gib": round(props.total_memory / 2 ** 30, 1),
                     "device_count": torch.cuda.device_count(), "sm_count": props.multi_processor_count})
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    spec = importlib.util.find_spec("dgsnet._C")
    info["extension_before_build"] = spec.origin if spec else None
    from dgsnet.fileio import atomic_write

    atomic_write(args.out, json.dumps(info, indent=1))
    for k, v in info.items():
        print(f"{k}: {v}")
    print(f"NOTE: {info['device']}; torch {info['torch']} (CUDA {info['torch_cuda']}), triton {info['triton']}")
    if args.need_cuda and not info["cuda_available"]:
        print(f"torch {info['torch']} sees no CUDA device (built for CUDA {info['torch_cuda']}): check nvidia-smi "
              "and CUDA_VISIBLE_DEVICES, install a CUDA build of torch, or run --dry-run-cpu", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- build (its own process)

def _extension_state() -> tuple[bool, str]:
    """(importable, description) of dgsnet._C, asked of a fresh interpreter (this one may hold a stale copy)."""
    code = ("import torch, dgsnet._C, dgsnet.surgery.backends.extension as e; "
            "print('cuda' if e.cuda_compiled() else 'cpu', dgsnet._C.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd())
    lines = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()
    return proc.returncode == 0, lines[-1]


def setup_default_arch(setup_py: str = "setup.py") -> str:
    """setup.py's DEFAULT_ARCH_LIST (what it builds for with no visible GPU), read from the file."""
    try:
        with open(setup_py) as fh:
            m = re.search(r"^DEFAULT_ARCH_LIST\s*=\s*[\"']([^\"']+)[\"']", fh.read(), re.M)
    except OSError:
        m = None
    return m.group(1) if m else "9.0+PTX"


def cmd_build(argv) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py _build")
    p.add_argument("--mode", choices=["cuda", "cpu-if-missing"], required=True)
    args = p.parse_args(argv)
    env = dict(os.environ)
    defaulted = False
    if args.mode == "cpu-if-missing":
        ok, what = _extension_state()
        if ok:
            print(f"dgsnet._C already built ({what}): reused, not rebuilt")
            print("NOTE: reused the built extension")
            return 0
        env["DGSNET_BUILD"] = "cpu"
    else:
        import torch

        env["DGSNET_BUILD"] = "cuda"
        home = find_cuda_home()
        if home is None:
            print("no nvcc: set CUDA_HOME to the CUDA toolkit (with bin/nvcc) matching torch's CUDA "
                  f"{torch.version.cuda}", file=sys.stderr)
            return 1
        env["CUDA_HOME"] = home
        if not env.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability()
                env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
            else:  # as setup.py does on its own: its default, said so
                env["TORCH_CUDA_ARCH_LIST"] = setup_default_arch()
                defaulted = True
                print(f"NOTE: no CUDA device visible and TORCH_CUDA_ARCH_LIST unset: building for setup.py's "
                      f"default TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']} (set it to choose)")
    env.setdefault("MAX_JOBS", str(len(os.sched_getaffinity(0))))  # as nproc: the cores this process may use
    shown = {k: env.get(k) for k in ("DGSNET_BUILD", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "CUDA_HOME")}
    print(f"building dgsnet._C in {os.getcwd()}: " + ", ".join(f"{k}={v}" for k, v in shown.items() if v))
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        print("ninja not found: torch builds serially (slower); a ninja wheel in --wheels fixes it")
    # --force: setuptools only compares source times, so a library built against another torch would stay.
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "--force"], env=env)
    if proc.returncode != 0:
        print(f"NOTE: build failed (exit {proc.returncode})")
        return proc.returncode
    ok, what = _extension_state()
    print(f"dgsnet._C: {what}")
    if not ok or (args.mode == "cuda" and not what.startswith("cuda")):
        print("NOTE: built, but " + ("it does not import" if not ok else "without CUDA kernels"))
        return 1
    arch = env.get("TORCH_CUDA_ARCH_LIST", "host")
    print(f"NOTE: built ({what.split()[0]}, arch {arch}" + (", setup.py's default: no device visible)"
                                                           if defaulted else ")"))
    return 0


# ---------------------------------------------------------------- the driver

@dataclass
class Step:
    name: str
    title: str
    command: list[str]
    limit: float
    results: list[str] = field(default_factory=list)
    status: str = "not run"
    seconds: float | None = None
    note: str = ""
    timeout_used: float | None = None


def git_commit(root: str) -> str:
    """The checkout's commit (+ "with local changes"), from git, else from .git itself, else from the
    DGSNET_COMMIT variable (a checkout copied without .git, e.g. to a device host)."""
    if shutil.which("git"):
        head = _run_out(["git", "-C", root, "rev-parse", "HEAD"])
        if head and re.fullmatch(r"[0-9a-f]{40}", head):
            dirty = _run_out(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"])
            return head + (" (with local changes)" if dirty else "")
    try:
        with open(os.path.join(root, ".git", "HEAD")) as fh:
            head = fh.read().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            path = os.path.join(root, ".git", ref)
            if os.path.exists(path):
                with open(path) as fh:
                    return fh.read().strip() + " (read from .git)"
            with open(os.path.join(root, ".git", "packed-refs")) as fh:
                for line in fh:
                    if line.strip().endswith(" " + ref):
                        return line.split()[0] + " (read from .git)"
        elif re.fullmatch(r"[0-9a-f]{40}", head):
            return head + " (read from .git)"
    except OSError:
        pass
    given = os.environ.get("DGSNET_COMMIT", "").strip()
    if given:
        return f"{given} (DGSNET_COMMIT)"
    return "unknown (no git, no readable .git and no DGSNET_COMMIT)"


def writable_checkout(root: str) -> bool:
    return all(os.access(os.path.join(root, d), os.W_OK) for d in ("", "dgsnet", "tests"))


def copy_checkout(root: str, dest: str) -> str:
    skip = shutil.ignore_patterns(".git", ".venv", "build", "runs", "gpu-check-out", "__pycache__",
                                  "*.so", ".pytest_cache")
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(root, dest, ignore=skip, symlinks=True)
    return dest


def plan(args, out: str, site: str, py: str) -> list[Step]:
    mode = "cpu" if args.dry_run_cpu else ("full" if args.full else "gpu")
    limits = dict(LIMITS[mode])
    limits.update(args.timeout)
    device = "cpu" if args.dry_run_cpu else "cuda"
    bench = [py]
    install = [py, SCRIPT, "_install", "--site", site] + (["--wheels", args.wheels] if args.wheels else [])
    env = [py, SCRIPT, "_env", "--out", os.path.join(out, "env.json")] + ([] if args.dry_run_cpu else ["--need-cuda"])
    build = [py, SCRIPT, "_build", "--mode", "cpu-if-missing" if args.dry_run_cpu else "cuda"]
    # --continue-on-collection-errors: a test module that cannot import here (a missing package) is
    # reported as an error, and the GPU tests of every other module still run.
    pytest = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--durations=15",
              "--continue-on-collection-errors", f"--junitxml={os.path.join(out, JUNIT)}", "tests"]
    # The GPU check's reduced repeats (torch.compile left out: minutes of compiling a ViT-L/14);
    # --dry-run-cpu: --quick; --full: the scripts' own (reported) sweeps.
    gpu_sizes = {"bench_surgery": ["--no-compile", "--repeats", "5"], "bench_layerwise": ["--repeats", "10"],
                 "bench_step": ["--no-compile", "--steps", "6", "--warmup", "2", "--repeats", "3"],
                 "train": ["--steps", "30"]}
    cpu_sizes = {"bench_surgery": ["--quick", "--no-compile"], "bench_layerwise": ["--quick"],
                 "bench_step": ["--quick", "--no-compile"], "train": ["--quick"]}
    full_sizes = {"bench_surgery": [], "bench_layerwise": [], "train": [],
                  "bench_step": ["--max-batch"]}  # the largest batch that fits, per competitor (GPU only)
    sized = {name: (full_sizes if args.full else cpu_sizes if args.dry_run_cpu else gpu_sizes)[name]
             for name in gpu_sizes}
    scripts = {"bench_surgery": "bench_surgery.py", "bench_layerwise": "bench_layerwise.py",
               "bench_step": "bench_step.py", "train": "bench_train_gpu.py"}
    titles = {"install": "install what is missing", "env": "device and versions", "build": "build dgsnet._C",
              "pytest": "pytest -m gpu", "bench_surgery": "bench/bench_surgery.py",
              "bench_layerwise": "bench/bench_layerwise.py", "bench_step": "bench/bench_step.py",
              "train": "short bf16 training run per surgery mode (bench/bench_train_gpu.py)"}
    commands = {"install": install, "env": env, "build": build, "pytest": pytest}
    for name, script in scripts.items():
        commands[name] = bench + [os.path.join("bench", script), "--device", device, "--out", out] + sized[name]
    steps = []
    for name in STEPS:
        if args.steps and name not in args.steps:
            continue
        steps.append(Step(name, titles[name], commands[name], float(limits[name]), RESULTS.get(name, [])))
    return steps


# Test-only (DGSNET_GPU_CHECK_HOLD): a step that never ends by itself, with a child process of its own, so a
# test can interrupt a running step at a known moment, however loaded the machine is.
HOLD = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', "
        "sys.argv[1]]); print('holding (DGSNET_GPU_CHECK_HOLD)', flush=True); time.sleep(600)")


class StopRequest:
    """A stop signal (a scheduler's SIGTERM, Ctrl-C) taken by the driver: passed on to the running step at
    once and acted on when the step has ended. Raising from the handler instead could land inside
    subprocess.Popen, after the step started and before the driver held it, and leave it running."""

    def __init__(self):
        self.requested = False
        self.proc: subprocess.Popen | None = None

    def handler(self, signum, frame) -> None:
        self.requested = True
        self.forward()

    def forward(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # timeout(1) passes it on to the step's processes


STOP = StopRequest()


def run_step(step: Step, env: dict, cwd: str, out: str, limit: float, fail: set[str],
             hold: set[str] = frozenset()) -> None:
    """Runs one step under timeout(1), its output in OUT/logs/<step>.log; sets its status and note."""
    log_path = os.path.join(out, "logs", f"{step.name}.log")
    command = step.command
    if step.name in fail:  # test-only (DGSNET_GPU_CHECK_FAIL): a step that fails the way a real one does
        command = [sys.executable, "-c", "import sys; print('injected failure (DGSNET_GPU_CHECK_FAIL)'); sys.exit(3)"]
    elif step.name in hold:
        command = [sys.executable, "-c", HOLD, out]
    secs = max(1, int(limit))
    started = time.time()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(command)}\n# cwd {cwd}, limit {secs} s\n")
        log.flush()
        # timeout(1) signals its whole process group, so DataLoader workers and compilers end too;
        # pytest gets SIGINT (it then writes its junit XML and summary), SIGKILL KILL_AFTER s later.
        first = ["-s", "INT"] if step.name == "pytest" else []
        proc = subprocess.Popen(["timeout", *first, f"--kill-after={KILL_AFTER}", str(secs), *command],
                                cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        STOP.proc = proc
        if STOP.requested:  # the signal came while the step was starting
            STOP.forward()
        try:
            rc = proc.wait()
        finally:
            STOP.proc = None
    step.seconds = time.time() - started
    step.timeout_used = secs
    if STOP.requested:
        step.status, step.note = "interrupted", f"stopped by a signal after {step.seconds:.0f} s"
        return
    with open(log_path, errors="replace") as fh:
        text = fh.read()
    notes = [ln[6:] for ln in text.splitlines() if ln.startswith("NOTE: ")]
    step.note = notes[-1] if notes else ""
    tally = ""
    if step.name == "pytest":
        junit = os.path.join(out, JUNIT)
        counts = junit_counts(junit) if _fresh(junit, started) else junit_counts("")
        ran = counts["tests"] - counts["skipped"]
        tally = (f"{ran - counts['failures'] - counts['errors']} passed, {counts['failures']} failed, "
                 f"{counts['errors']} errors, {counts['skipped']} skipped")
    if rc in (124, 137) and step.seconds >= secs - 1:
        step.status, step.note = "timeout", f"killed after {secs} s" + (
            f"; before that {tally}" if tally else f"; {step.note}" if step.note else "")
    elif step.name == "pytest":
        step.note = tally
        if rc == 5 or (rc == 0 and ran == 0):  # nothing selected, or all skipped (no CUDA): not a failure
            step.status = "skipped"
            step.note = "no test ran (" + step.note + ")"
        else:
            step.status = "pass" if rc == 0 else "fail"
    else:
        step.status = "pass" if rc == 0 else "fail"
        if rc != 0 and not step.note:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            step.note = f"exit {rc}: {lines[-1][:200]}" if lines else f"exit {rc}"
    if step.status == "pass":
        stale = [r for r in step.results if not _fresh(os.path.join(out, r), started)]
        if stale:
            step.status, step.note = "fail", f"wrote no {', '.join(stale)}"


def _fresh(path: str, since: float) -> bool:
    return os.path.isfile(path) and os.path.getmtime(path) >= since - 1


def junit_counts(path: str) -> dict[str, int]:
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        import xml.etree.ElementTree as ET

        root = ET.parse(path).getroot()
    except Exception:  # noqa: BLE001 (no file, or one cut off by a timeout: no counts)
        return counts
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0) or 0)
    return counts


# ---------------------------------------------------------------- summary.md

def _load(out: str, name: str, fresh_since: float) -> dict | None:
    path = os.path.join(out, name)
    if not _fresh(path, fresh_since):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _table(rows: list[dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows or not columns:
        return "(no rows)\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def key_numbers(out: str, since: float) -> str:
    """The ratios of each benchmark's JSON this run wrote, as markdown (columns picked by name, so a
    script that gains a column shows it)."""
    parts = []
    surgery = _load(out, "bench_surgery.json", since)
    if surgery:
        rows = surgery["rows"]
        some = [r for r in rows if r.get("D") == 768] or rows
        cols = ["B", "D", "reference_us"] + sorted({k for r in some for k in r if k.endswith("_speedup")
                                                    or "x_copy_floor" in k or k.endswith("_launches")})
        text = (f"### Fused objective, fwd + bwd ({surgery.get('dtype')}; speedup over the reference, "
                f"`bench_surgery.json`)\n\n" + _table(some, cols))
        overhead = surgery.get("call_overhead") or []
        if overhead:
            text += "\nCall overhead at B=1:\n\n" + _table(overhead, ["backend", "D", "fwd_us", "fwd_bwd_us",
                                                                      "autograd_floor_us", "own_us"])
        goals = [{"target": k, "value": v.get("value"), "goal": v.get("target"), "met": v.get("met")}
                 for k, v in (surgery.get("targets") or {}).items()]
        if goals:
            text += "\nThe issue's targets:\n\n" + _table(goals, ["target", "value", "goal", "met"])
        parts.append(text)
    layer = _load(out, "bench_layerwise.json", since)
    if layer:
        proj = [r for r in layer["rows"] if r.get("part") == "projection"]
        steps = [r for r in layer["rows"] if r.get("part") == "train_step"]
        cols = ["model", "tensors", "loop_us"] + sorted({k for r in proj for k in r if k.endswith("_speedup")})
        parts.append("### LoRA gradient projection (speedup over the per-tensor loop, `bench_layerwise.json`)\n\n"
                     + _table(proj, cols)
                     + f"\nTraining step of {layer.get('model')} by mode:\n\n"
                     + _table(steps, ["mode", "step_ms", "relative_to_none"]))
    step = _load(out, "bench_step.json", since)
    if step:
        rows = [r for r in step["rows"] if r.get("part") == "step"]
        ratios = [{"ratio": k, "value": v} for k, v in (step.get("ratios") or {}).items()]
        biggest = [r for r in step["rows"] if r.get("part") == "max_batch"]
        parts.append(f"### Whole stage-2 step ({step.get('model')}, batch {step.get('batch')}, `bench_step.json`)\n\n"
                     + _table(rows, ["competitor", "precision", "step_ms", "images_per_s", "x_published",
                                     "x_floor", "peak_mb", "error"])
                     + "\n" + _table(ratios, ["ratio", "value"])
                     + ("\nLargest batch that fits (`--max-batch`, `--full` only):\n\n"
                        + _table(biggest, ["competitor", "batch", "step_ms", "images_per_s", "peak_mb"])
                        if biggest else ""))
    train = _load(out, "bench_train_gpu.json", since)
    if train:
        parts.append(f"### Training run ({train.get('model')}, batch {train.get('batch')}, {train.get('steps')} steps, "
                     f"{'fp32' if train.get('amp') == 'None' else train.get('amp')}, `bench_train_gpu.json`)\n\n"
                     + _table(train["rows"], ["mode", "loss_first", "loss_last", "loss_finite", "step_ms",
                                              "images_per_s", "relative_to_none", "peak_mb"]))
    return "\n".join(parts) if parts else "(no benchmark wrote results in this run)\n"


def write_summary(out: str, steps: list[Step], info: dict, started: float, final: bool) -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from dgsnet.fileio import atomic_write

    env = {}
    try:
        with open(os.path.join(out, "env.json")) as fh:
            env = json.load(fh)
    except (OSError, ValueError):
        pass
    done = [s for s in steps if s.status != "not run"]
    bad = [s for s in steps if s.status in ("fail", "timeout", "skipped (budget)", "interrupted")]
    total = time.time() - started
    status = 130 if any(s.status == "interrupted" for s in steps) else 1 if bad else 0
    verdict = ("all steps passed" if final and not bad else
               f"{len(bad)} step(s) did not pass: {', '.join(s.name for s in bad)}" if final else
               f"in progress: {len(done)} of {len(steps)} steps run")
    budget = f" of the {info['budget']:.0f} s budget" if info["budget"] else ""
    lines = [f"# dgsnet GPU check ({info['mode']})", "",
             f"- result: **{verdict}** (exit status {status})" if final else f"- result: {verdict}",
             f"- device: {env.get('device', 'unknown (the env step did not finish)')}"
             + (f", compute capability {env['capability']}, {env.get('device_memory_gib')} GiB"
                if env.get("capability") else "")
             + (f", driver {env['driver']}" if env.get("driver") else ""),
             f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), triton {env.get('triton')}, "
             f"nvcc {env.get('nvcc_version')}, Python {env.get('python')}, open_clip {env.get('open_clip_torch')}, "
             f"onnxruntime {env.get('onnxruntime')}",
             f"- dgsnet commit: {info['commit']}",
             f"- started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))}, took {total:.0f} s{budget}; "
             f"DGSNET_TRITON_PINNED=1",
             f"- command: `{info['command']}`", "",
             "| step | status | seconds | limit s | notes | log |", "|---|---|---|---|---|---|"]
    for s in steps:
        secs = "" if s.seconds is None else f"{s.seconds:.1f}"
        limit = f"{s.timeout_used or s.limit:.0f}"
        note = s.note.replace("|", "/")
        lines.append(f"| {s.name} | {s.status} | {secs} | {limit} | {note} | logs/{s.name}.log |")
    lines += ["", "## Key numbers", "", key_numbers(out, started)]
    atomic_write(os.path.join(out, "summary.md"), "\n".join(lines) + "\n")
    record = {"mode": info["mode"], "final": final, "commit": info["commit"], "started": started,
              "seconds": total, "budget": info["budget"], "env": env,
              "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds, "limit": s.timeout_used or s.limit,
                         "note": s.note, "command": s.command} for s in steps]}
    atomic_write(os.path.join(out, "gpu_check.json"), json.dumps(record, indent=1))


def prepare_site(site: str, cwd: str) -> None:
    """The private site folder (first on every step's PYTHONPATH), with `dgsnet_export` in it: a link
    to cwd/export, which only an installed checkout maps to that name (package_dir) and a bare host
    lacks, so that pytest's collection and the benchmarks import it there too."""
    os.makedirs(site, exist_ok=True)
    link = os.path.join(site, "dgsnet_export")
    target = os.path.join(cwd, "export")
    if os.path.islink(link):
        if os.readlink(link) == target:
            return
        os.unlink(link)
    elif os.path.exists(link):  # a real package of that name installed there: leave it
        return
    tmp = f"{link}.tmp-{os.getpid()}"
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def step_env(site: str, cwd: str, work: str, py: str, dry_run: bool, base: dict | None = None) -> dict:
    """The environment every step runs in: the private site folder, then the checkout, first on
    PYTHONPATH; their scripts and the interpreter's on PATH; offline, pinned Triton configs, private
    caches; the CPU path for a dry run."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([site, cwd] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # The private packages' scripts, then the interpreter's own (ninja: without it on PATH torch builds serially).
    env["PATH"] = os.pathsep.join([os.path.join(site, "bin"), os.path.dirname(py), env.get("PATH", "")])
    env.update({"DGSNET_TRITON_PINNED": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
    for var, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("MPLCONFIGDIR", "mpl")):
        env.setdefault(var, os.path.join(work, sub))
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU host
    return env


def write_archive(out: str, path: str) -> list[str]:
    """OUT_DIR as a .tar.gz at `path` (members under OUT_DIR's own name), written to a temporary file
    beside it and renamed into place, so a reader never sees half an archive; returns the member names.
    The archive itself (and its temporary file) is left out when it lies inside OUT_DIR."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    skip = {path, tmp}
    top = os.path.basename(os.path.normpath(out))
    names: list[str] = []

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if os.path.join(os.path.dirname(os.path.normpath(out)), info.name) in skip:
            return None
        names.append(info.name)
        return info

    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(out, arcname=top, filter=keep)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return names


def _archive(out: str, path: str | None) -> None:
    if not path:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the archive short
    try:
        names = write_archive(out, path)
        print(f"gpu-check: archived {out} to {path} ({len(names)} entries, "
              f"{os.path.getsize(path) / 2 ** 20:.1f} MiB)", flush=True)
    except (OSError, tarfile.TarError) as exc:
        print(f"gpu-check: could not write the archive {path}: {exc}", file=sys.stderr)


def parse_args(argv):
    with open(SHELL) as fh:  # the shell script's header is the one description of what the host needs
        header = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in fh.read().splitlines()[1:]
                  if ln.startswith("#")]
    p = argparse.ArgumentParser(prog="scripts/gpu-check.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Validate dgsnet on this machine's GPU: build, GPU tests, "
                                            "benchmarks, a short training run; results in OUT_DIR.",
                                epilog="\n".join(header))
    p.add_argument("out", nargs="?", default="gpu-check-out", metavar="OUT_DIR",
                   help="where logs, results and summary.md go (default ./gpu-check-out)")
    p.add_argument("--wheels", metavar="DIR",
                   help="folder of wheels; what the host lacks is installed from it (no network, no index)")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="the same steps at tiny sizes on the CPU (CI): no CUDA build, benchmarks --quick")
    p.add_argument("--full", action="store_true",
                   help="the benchmarks' own (reported) sweeps and longer limits instead of the 8-minute check")
    p.add_argument("--steps", default=None, help=f"only these steps, comma-separated: {','.join(STEPS)}")
    p.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                   help="a step's time limit (repeatable), e.g. --timeout build=300")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check; no step runs past it (default: 480 for the GPU "
                        "check, none for --full and --dry-run-cpu; 0: none)")
    p.add_argument("--work", default=None,
                   help="folder for private packages, caches and a copy of a read-only checkout "
                        "(default ${TMPDIR:-/tmp}/dgsnet-gpu-check-$USER)")
    p.add_argument("--archive", metavar="FILE",
                   help="at the end (also after a failure or an interruption) write OUT_DIR as a .tar.gz "
                        "to FILE, atomically: one file to fetch, e.g. $OUT/gpu-check.tar.gz on a device host")
    p.add_argument("--wheel-list", nargs="?", const="image", choices=["image", "all"], default=None,
                   help="print the distributions (name==version of this environment) to put in the wheel "
                        "folder, and exit: by default what the GPU image lacks (open_clip_torch, ftfy, "
                        "wcwidth); `all`: everything dgsnet imports, for a host with only torch and triton")
    args = p.parse_args(argv)
    if args.steps is not None:
        args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = [s for s in args.steps if s not in STEPS]
        if unknown or not args.steps:
            p.error(f"--steps {','.join(args.steps)}: use some of {','.join(STEPS)}")
    limits = {}
    for item in args.timeout:
        name, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1
        if name not in STEPS or seconds <= 0:
            p.error(f"--timeout {item}: use STEP=SECONDS with STEP one of {','.join(STEPS)} and SECONDS > 0")
        limits[name] = seconds
    args.timeout = limits
    if args.dry_run_cpu and args.full:
        p.error("--dry-run-cpu and --full: pick one")
    if args.wheels is not None:
        if not os.path.isdir(args.wheels):
            p.error(f"--wheels {args.wheels}: no such folder. Fetch the wheels on a machine with network "
                    "(README.md, 'Validating on a GPU': pip download ... -d DIR), copy DIR here, or leave "
                    "--wheels out when the host has every package")
        if not any(n.endswith(".whl") for n in os.listdir(args.wheels)):
            p.error(f"--wheels {args.wheels}: the folder holds no .whl files (README.md, 'Validating on a GPU')")
        args.wheels = os.path.abspath(args.wheels)
    if args.budget is None:
        args.budget = 0.0 if (args.dry_run_cpu or args.full) else 480.0
    if args.archive is not None:
        args.archive = os.path.abspath(args.archive)
        if os.path.isdir(args.archive):
            p.error(f"--archive {args.archive}: a folder; name the .tar.gz file to write")
    return args


# Never in the wheel list: the host's own must suit its torch (torch 2.11 requires setuptools < 82,
# newer than this environment's may be), and every host that builds torch extensions has one.
NOT_CARRIED = {"setuptools": "the host's own (torch 2.11 requires setuptools < 82); never carried"}


def print_wheel_list(which: str = "image") -> int:
    """name==version (this environment's) of the wheels to carry: what the GPU image lacks (IMAGE_LACKS),
    or with `all` every distribution of NEEDED (a host with nothing but torch and triton)."""
    if which == "all":
        print("# every distribution dgsnet, its benchmarks and tests import (dependencies included, for a host "
              "with nothing but torch and triton)")
    else:
        print("# what the GPU image (Python 3.12, torch 2.11) lacks; `--wheel-list all` for a host with less")
    for dist, *_ in NEEDED:
        if dist in TORCH_BOUND or (which != "all" and dist not in IMAGE_LACKS):
            continue
        if dist in NOT_CARRIED:
            print(f"# {dist}: {NOT_CARRIED[dist]}")
            continue
        version = _version(dist)
        print(f"{dist}=={version}" if version else f"# {dist}: not installed here")
    print("# torchvision: the build made for the host's torch (torch 2.11 -> torchvision 0.26), from the "
          "PyTorch index of its CUDA; only when the host lacks it")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    internal = {"_install": cmd_install, "_env": cmd_env, "_build": cmd_build}
    if argv and argv[0] in internal:
        return internal[argv[0]](argv[1:])
    args = parse_args(argv)
    if args.wheel_list:
        return print_wheel_list(args.wheel_list)
    started = time.time()
    out = os.path.abspath(args.out)
    logs = os.path.join(out, "logs")
    try:
        os.makedirs(logs, exist_ok=True)
    except OSError as exc:
        print(f"gpu-check: OUT_DIR {out} cannot be written ({exc.strerror}): pass a writable folder "
              "as OUT_DIR", file=sys.stderr)
        return 2
    work = os.path.abspath(args.work or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                     f"dgsnet-gpu-check-{os.environ.get('USER', os.getuid())}"))
    try:
        return run_check(args, argv, out, logs, work, started)
    finally:  # after a failure or an interruption too: the one file a device host hands back
        _archive(out, args.archive)


def run_check(args, argv, out: str, logs: str, work: str, started: float) -> int:
    site = os.path.join(work, "site")
    try:
        os.makedirs(site, exist_ok=True)  # before any step starts: a path missing at start-up is never searched
    except OSError as exc:
        print(f"gpu-check: the work folder {work} cannot be written ({exc.strerror}): pass --work DIR",
              file=sys.stderr)
        return 2
    mode = "dry-run-cpu" if args.dry_run_cpu else ("full" if args.full else "gpu")
    info = {"mode": mode, "commit": git_commit(ROOT), "budget": args.budget,
            "command": " ".join(["bash scripts/gpu-check.sh", *(argv if argv else [])])}
    cwd = ROOT
    if not writable_checkout(ROOT):
        cwd = copy_checkout(ROOT, os.path.join(work, "src"))
        print(f"gpu-check: {ROOT} is not writable: copied it to {cwd} and running there")
    try:
        prepare_site(site, cwd)
    except OSError as exc:
        print(f"gpu-check: cannot link dgsnet_export into {site} ({exc.strerror}): pass --work DIR",
              file=sys.stderr)
        return 2
    py = sys.executable
    env = step_env(site, cwd, work, py, args.dry_run_cpu)
    fail = {s for s in os.environ.get("DGSNET_GPU_CHECK_FAIL", "").split(",") if s}
    hold = {s for s in os.environ.get("DGSNET_GPU_CHECK_HOLD", "").split(",") if s}
    steps = plan(args, out, site, py)
    print(f"gpu-check ({mode}): results in {out}, work folder {work}"
          + (f", budget {args.budget:.0f} s" if args.budget else ""), flush=True)
    deadline = started + args.budget if args.budget else None

    # A scheduler's SIGTERM or Ctrl-C: the running step is stopped, summary.md is still written.
    signal.signal(signal.SIGTERM, STOP.handler)
    signal.signal(signal.SIGINT, STOP.handler)
    for i, step in enumerate(steps, 1):
        if STOP.requested:  # stopped between steps: the one that was due is the interrupted one
            step.status = "interrupted"
            break
        limit = step.limit
        if deadline is not None:
            left = deadline - time.time() - RESERVE
            if left < 10:
                step.status, step.note = "skipped (budget)", f"under 10 s of the {args.budget:.0f} s budget left"
                print(f"[{i}/{len(steps)}] {step.name}: skipped, the budget is spent", flush=True)
                continue
            limit = min(limit, left)
        print(f"[{i}/{len(steps)}] {step.name}: {step.title} (limit {limit:.0f} s) ...", flush=True)
        log = os.path.join(logs, f"{step.name}.log")
        run_step(step, env, cwd, out, limit, fail, hold)
        if step.status == "interrupted":
            break
        print(f"[{i}/{len(steps)}] {step.name}: {step.status} in {step.seconds:.1f} s"
              + (f": {step.note}" if step.note else ""), flush=True)
        if step.status in ("fail", "timeout"):
            with open(log, errors="replace") as fh:
                tail = fh.read().splitlines()[-15:]
            print("    " + "\n    ".join(tail) + f"\n    (whole log: {log})", flush=True)
        write_summary(out, steps, info, started, final=False)
    if any(s.status == "interrupted" for s in steps):  # (a signal after the last step changes nothing)
        write_summary(out, steps, info, started, final=True)
        print(f"\ngpu-check: interrupted; {os.path.join(out, 'summary.md')} says what ran", file=sys.stderr)
        return 130
    write_summary(out, steps, info, started, final=True)
    with open(os.path.join(out, "summary.md")) as fh:
        print("\n" + fh.read())
    bad = [s for s in steps if s.status in ("fail", "timeout", "skipped (budget)", "interrupted")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
