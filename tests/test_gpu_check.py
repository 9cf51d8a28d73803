"""scripts/gpu-check.sh: its --dry-run-cpu runs every step and reports it, a failed or timed-out
step is reported while the later ones still run, usage errors are clear, and the offline install
installs a local wheel into a private folder (never the environment) and refuses a torchvision
made for another torch."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu-check.sh")
BENCH_JSON = ("bench_surgery.json", "bench_layerwise.json", "bench_step.json", "bench_train_gpu.json")


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args, env=None, timeout=600):
    full = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=full,
                          timeout=timeout)


def _statuses(summary: str) -> dict[str, str]:
    """{step: status} from summary.md's step table (the first table, under "| step | status |")."""
    table = summary.split("| step | status |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\w+) \| ([^|]+?) \|", table, re.M)
    return dict(rows)


def _wheel(folder, dist: str, version: str, module: str, requires=()) -> str:
    """A minimal pure-Python wheel: one module, METADATA with `requires`, WHEEL and RECORD."""
    name = f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
    path = os.path.join(str(folder), name)
    info = f"{dist.replace('-', '_')}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{module}/__init__.py": f"VALUE = {version!r}\n", f"{info}/METADATA": meta,
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(n, text)
    return path


# ---------------------------------------------------------------- fast: usage

def test_help_says_what_the_host_needs():
    proc = _run("--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in ("--wheels", "--dry-run-cpu", "needs", "torch", "nvcc", "TORCH_CUDA_ARCH_LIST", "timeout",
                 "DGSNET_TRITON_PINNED"):
        assert word in proc.stdout, word


def test_a_missing_or_empty_wheel_folder_is_a_clear_error(tmp_path):
    proc = _run("--wheels", str(tmp_path / "nowhere"), str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    assert f"--wheels {tmp_path / 'nowhere'}: no such folder" in proc.stderr
    assert "Validating on a GPU" in proc.stderr and "pip download" in proc.stderr
    assert not (tmp_path / "out").exists()  # a usage error starts nothing
    (tmp_path / "empty").mkdir()
    proc = _run("--wheels", str(tmp_path / "empty"), timeout=60)
    assert proc.returncode == 2 and "holds no .whl files" in proc.stderr


def test_bad_steps_and_timeouts_are_usage_errors():
    proc = _run("--steps", "pytest,bench", timeout=60)
    assert proc.returncode == 2 and "--steps" in proc.stderr and "bench_surgery" in proc.stderr
    proc = _run("--timeout", "build=soon", timeout=60)
    assert proc.returncode == 2 and "STEP=SECONDS" in proc.stderr


def test_the_wheel_list_names_what_the_gpu_image_lacks_with_this_environments_versions():
    proc = _run("--wheel-list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    from importlib.metadata import version

    # by default only what the GPU image lacks: small enough to carry to it
    wanted = [line for line in lines if not line.startswith("#")]
    assert wanted == [f"open_clip_torch=={version('open_clip_torch')}", f"ftfy=={version('ftfy')}",
                      f"wcwidth=={version('wcwidth')}"]
    # torchvision must match the host's torch, not this environment's: a comment only
    assert any(line.startswith("# torchvision") for line in lines)
    proc = _run("--wheel-list", "all", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert set(wanted) < set(lines) and f"onnxscript=={version('onnxscript')}" in lines
    assert not any(line.startswith(("torchvision==", "setuptools==")) for line in lines)
    assert any(line.startswith("# setuptools") and "< 82" in line for line in lines)


def test_a_dependency_is_needed_only_where_what_imports_it_is_missing_too():
    """The GPU image has huggingface_hub 1 (httpx): the httpx2 / httpcore2 / truststore that this
    environment's huggingface_hub 2 imports are not needed there; what open_clip pulls in is."""
    gc = _driver()
    image = [("open_clip_torch", "open_clip"), ("ftfy", "ftfy"), ("wcwidth", "wcwidth"), ("httpx2", "httpx2"),
             ("httpcore2", "httpcore2"), ("truststore", "truststore")]
    assert gc.required(image) == image[:3]
    # a host without huggingface_hub installs this environment's, and with it what it imports
    bare = image + [("huggingface_hub", "huggingface_hub"), ("h11", "h11")]
    assert gc.required(bare) == bare
    # a dependency of a present distribution is not needed however deep (wcwidth <- ftfy <- open_clip)
    assert gc.required([("wcwidth", "wcwidth"), ("ftfy", "ftfy")]) == []
    # every "needed by" names a distribution of the list
    dists = {d for d, *_ in gc.NEEDED}
    assert all(set(by) <= dists for _, _, by in gc.NEEDED)
    assert set(gc.IMAGE_LACKS) <= dists


# ---------------------------------------------------------------- fast: the offline install

def test_a_missing_module_is_installed_from_a_local_wheel_into_the_private_folder_only(tmp_path):
    gc = _driver()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpucheck-probe-dist", "1.2.3", "gpucheck_probe_mod")
    need = [("gpucheck-probe-dist", "gpucheck_probe_mod")]
    assert gc.missing_modules(need) == need
    todo, no_wheel, refused = gc.plan_install(need + [("absent-dist", "absent_mod")], str(wheels), "2.11.0")
    assert (todo, no_wheel, refused) == (["gpucheck-probe-dist"], ["absent-dist"], {})
    site = tmp_path / "site"
    installed, failed = gc.pip_install(str(site), str(wheels), todo)
    assert installed == ["gpucheck-probe-dist"] and failed == {}
    assert (site / "gpucheck_probe_mod" / "__init__.py").is_file()
    probe = subprocess.run([sys.executable, "-c", "import gpucheck_probe_mod as m; print(m.VALUE, m.__file__)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert probe.returncode == 0 and probe.stdout.startswith("1.2.3 " + str(site))
    # the environment itself was not touched
    assert importlib.util.find_spec("gpucheck_probe_mod") is None


def test_a_broken_wheel_is_named_and_the_others_still_install(tmp_path):
    gc = _driver()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpucheck-good", "1.0", "gpucheck_good")
    (wheels / "gpucheck_bad-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    installed, failed = gc.pip_install(str(tmp_path / "site"), str(wheels), ["gpucheck-good", "gpucheck-bad"])
    assert installed == ["gpucheck-good"] and list(failed) == ["gpucheck-bad"]


def test_a_torchvision_made_for_another_torch_is_refused(tmp_path):
    gc = _driver()
    _wheel(tmp_path, "torchvision", "0.29.1", "torchvision_fake", requires=["torch==2.14.1", "numpy"])
    assert gc.torch_pin(str(tmp_path / "torchvision-0.29.1-py3-none-any.whl")) == "2.14.1"
    need = [("torchvision", "torchvision")]
    todo, _, refused = gc.plan_install(need, str(tmp_path), "2.11.0")
    assert todo == [] and "torch==2.14.1" in refused["torchvision"] and "torch 2.11.0" in refused["torchvision"]
    todo, _, refused = gc.plan_install(need, str(tmp_path), "2.14.1")  # local tags (+cu130) are stripped before
    assert todo == ["torchvision"] and refused == {}


def test_the_commit_is_read_from_dot_git_without_git(tmp_path):
    gc = _driver()
    sha = "0123456789abcdef0123456789abcdef01234567"
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    assert gc.git_commit(str(tmp_path)) == sha + " (read from .git)"
    (tmp_path / ".git" / "refs" / "heads" / "main").unlink()
    (tmp_path / ".git" / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    assert gc.git_commit(str(tmp_path)) == sha + " (read from .git)"
    assert gc.git_commit(str(tmp_path / "elsewhere")).startswith("unknown")


def test_the_commit_comes_from_dgsnet_commit_where_there_is_no_git(tmp_path, monkeypatch):
    """A checkout copied without .git (a device host): DGSNET_COMMIT names the commit; a readable .git
    still wins."""
    gc = _driver()
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("DGSNET_COMMIT", sha)
    assert gc.git_commit(str(tmp_path)) == f"{sha} (DGSNET_COMMIT)"
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    assert gc.git_commit(str(tmp_path)).endswith("(read from .git)")
    monkeypatch.setenv("DGSNET_COMMIT", "")
    assert gc.git_commit(str(tmp_path / "elsewhere")).startswith("unknown")


def test_a_read_only_checkout_is_copied_without_its_environment_and_builds(tmp_path):
    gc = _driver()
    src = tmp_path / "repo"
    for rel in ("dgsnet/__init__.py", "tests/test_x.py", ".venv/bin/python", ".git/HEAD", "build/x.o",
                "dgsnet/_C.cpython-312-x86_64-linux-gnu.so", "dgsnet/__pycache__/a.pyc", "runs/demo/log.jsonl"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    dest = tmp_path / "work" / "src"
    (dest / "stale").mkdir(parents=True)  # a copy from an earlier run is replaced, not merged
    assert gc.copy_checkout(str(src), str(dest)) == str(dest)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["dgsnet/__init__.py", "tests/test_x.py"]


def test_the_summary_shows_the_gpu_columns_of_fresh_results_only(tmp_path):
    """A GPU run's bench_surgery rows (cuda/triton speedups, time over the copy floor, launches) and
    targets reach summary.md; a results file older than the run is left out."""
    gc = _driver()
    rows = [{"B": 32, "D": 768, "reference_us": 410.0, "cuda_speedup": 12.5, "triton_speedup": 9.5,
             "cuda_x_copy_floor": 3.1, "cuda_fwd_launches": 2, "cuda_bwd_launches": 1, "cuda_peak_MiB": 1.0},
            {"B": 32, "D": 512, "reference_us": 300.0, "cuda_speedup": 11.0}]
    record = {"dtype": "float32", "rows": rows,
              "targets": {"triton_speedup_B32_D768": {"value": 9.5, "target": ">= 10", "met": False}}}
    (tmp_path / "bench_surgery.json").write_text(json.dumps(record))
    text = gc.key_numbers(str(tmp_path), since=0)
    assert ("| B | D | reference_us | cuda_bwd_launches | cuda_fwd_launches | cuda_speedup | cuda_x_copy_floor "
            "| triton_speedup |") in text
    assert "| 32 | 768 | 410 | 1 | 2 | 12.5 | 3.1 | 9.5 |" in text and "| 512 |" not in text  # D=768 rows only
    assert "| triton_speedup_B32_D768 | 9.5 | >= 10 | False |" in text
    assert "peak_MiB" not in text
    old = os.path.getmtime(tmp_path / "bench_surgery.json")
    assert gc.key_numbers(str(tmp_path), since=old + 60).startswith("(no benchmark wrote results")


def test_sigterm_stops_the_running_step_and_still_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    # The step is held running (DGSNET_GPU_CHECK_HOLD: a process and its child that never end by themselves), so
    # the signal always reaches a running step: the real dry-run step can finish first on a loaded machine.
    proc = subprocess.Popen(["bash", SCRIPT, "--dry-run-cpu", "--steps", "train", "--work", str(tmp_path / "work"),
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "DGSNET_GPU_CHECK_HOLD": "train"})
    log = out / "logs" / "train.log"
    try:
        for line in proc.stdout:  # the script execs Python: proc is the driver itself
            if "train: short" in line:
                break
        deadline = time.time() + 60
        while "holding" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
            time.sleep(0.1)
        assert "holding" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    summary = (out / "summary.md").read_text()
    assert _statuses(summary) == {"train": "interrupted"} and "(exit status 130)" in summary
    # the step's processes end too (timeout(1) passes the signal on to its process group)
    deadline = time.time() + 20
    while time.time() < deadline:
        left = [a for a in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
                if str(out) in a]
        if not left:
            break
        time.sleep(0.5)
    assert left == []


# What a host without the editable install sees: the interpreter minus the finders that the editable
# install (setuptools' __editable__*finder*.py, loaded by a .pth file) puts in sys.meta_path and
# sys.path_hooks; then it prints where dgsnet_export comes from and runs pytest with the given arguments.
BARE = """
import importlib.util, sys
editable = lambda f: "__editable__" in (getattr(f, "__module__", "") or "")
removed = sum(1 for f in sys.meta_path if editable(f))
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path_importer_cache.clear()
spec = importlib.util.find_spec("dgsnet_export")
print("editable finders removed:", removed, flush=True)
print("dgsnet_export:", spec.origin if spec else None, flush=True)
if len(sys.argv) > 1:
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
"""


def test_pytest_collects_the_gpu_tests_without_the_editable_install(tmp_path):
    """A bare host (the repo copied, nothing installed): the private site folder's dgsnet_export link makes
    tests/cli and tests/data collect (they import dgsnet_export), in the environment the steps get."""
    gc = _driver()
    site, work = str(tmp_path / "site"), str(tmp_path / "work")
    os.makedirs(site)
    env = gc.step_env(site, ROOT, work, sys.executable, dry_run=True)
    # without the link, the bare interpreter cannot import dgsnet_export (where the editable install provided it)
    control = subprocess.run([sys.executable, "-c", BARE], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert control.returncode == 0, control.stderr
    if "editable finders removed: 0" not in control.stdout:
        assert "dgsnet_export: None" in control.stdout, control.stdout
    gc.prepare_site(site, ROOT)
    gc.prepare_site(site, ROOT)  # a second run keeps the link
    assert os.readlink(os.path.join(site, "dgsnet_export")) == os.path.join(ROOT, "export")
    proc = subprocess.run([sys.executable, "-c", BARE, "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           "tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert f"dgsnet_export: {os.path.join(site, 'dgsnet_export', '__init__.py')}" in text, text[-3000:]
    assert proc.returncode == 0 and "ERROR" not in text and "error" not in text.splitlines()[-1], text[-3000:]
    collected = re.search(r"^(\d+)/\d+ tests collected", text, re.M)
    assert collected and int(collected.group(1)) > 0, text[-3000:]


def test_the_pytest_step_continues_past_collection_errors_and_keeps_its_counts_on_a_timeout(tmp_path):
    """pytest runs with --continue-on-collection-errors, and under `timeout -s INT`: stopped at its limit,
    it still writes its junit XML, whose counts reach the step's note."""
    gc = _driver()
    args = gc.parse_args([str(tmp_path / "out")])
    command = next(s.command for s in gc.plan(args, str(tmp_path / "out"), str(tmp_path / "site"), sys.executable)
                   if s.name == "pytest")
    assert "--continue-on-collection-errors" in command
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_slow.py").write_text("import time\n\ndef test_quick():\n    pass\n\n"
                                        "def test_stuck():\n    time.sleep(600)\n")
    (suite / "test_broken.py").write_text("import not_a_module_gpu_check\n")
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    step = gc.Step("pytest", "pytest", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                        "--continue-on-collection-errors", f"--junitxml={out / gc.JUNIT}",
                                        str(suite)], 12)
    gc.run_step(step, dict(os.environ), str(suite), str(out), 12, set())
    log = (out / "logs" / "pytest.log").read_text()
    assert step.status == "timeout", (step.note, log[-2000:])
    assert step.note.startswith("killed after 12 s; before that 1 passed, 0 failed, 1 errors"), (step.note, log)
    assert "KeyboardInterrupt" in log and step.seconds < 12 + gc.KILL_AFTER


def _members(path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_the_archive_holds_out_dir_and_is_written_atomically(tmp_path):
    gc = _driver()
    out = tmp_path / "res"
    (out / "logs").mkdir(parents=True)
    (out / "summary.md").write_text("# s\n")
    (out / "logs" / "env.log").write_text("x\n")
    archive = out / "res.tar.gz"  # inside OUT_DIR: left out of itself
    archive.write_text("an older archive")
    names = gc.write_archive(str(out), str(archive))
    assert sorted(names) == _members(archive) == ["res", "res/logs", "res/logs/env.log", "res/summary.md"]
    assert sorted(os.listdir(out)) == ["logs", "res.tar.gz", "summary.md"]  # no temporary file left


def test_the_archive_is_written_after_a_failed_run(tmp_path):
    """--archive FILE: OUT_DIR as one .tar.gz (what a device host hands back), also when a step failed."""
    out, archive = tmp_path / "out", tmp_path / "fetch" / "gpu-check.tar.gz"
    proc = _run("--dry-run-cpu", "--steps", "train", "--work", str(tmp_path / "work"), "--archive", str(archive),
                str(out), env={"DGSNET_GPU_CHECK_FAIL": "train"}, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"archived {out} to {archive}" in proc.stdout
    assert _members(archive) == ["out", "out/gpu_check.json", "out/logs", "out/logs/train.log", "out/summary.md"]
    assert os.listdir(archive.parent) == ["gpu-check.tar.gz"]
    proc = _run("--archive", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "--archive" in proc.stderr


def test_the_build_uses_setup_pys_default_arch_without_a_visible_device(tmp_path, monkeypatch, capsys):
    gc = _driver()
    import torch

    with open(os.path.join(ROOT, "setup.py")) as fh:
        default = re.search(r'^DEFAULT_ARCH_LIST = "([^"]+)"', fh.read(), re.M).group(1)
    monkeypatch.chdir(ROOT)
    assert gc.setup_default_arch() == default
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gc, "find_cuda_home", lambda: str(tmp_path))
    seen = {}

    def fake_run(cmd, env=None, **kw):
        seen.update(env or {})
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(gc.subprocess, "run", fake_run)
    assert gc.cmd_build(["--mode", "cuda"]) == 1  # the fake build "fails": nothing is compiled here
    assert seen["TORCH_CUDA_ARCH_LIST"] == default and seen["DGSNET_BUILD"] == "cuda"
    assert f"NOTE: no CUDA device visible and TORCH_CUDA_ARCH_LIST unset: building for setup.py's default " \
           f"TORCH_CUDA_ARCH_LIST={default}" in capsys.readouterr().out


def test_limits_fit_the_budget_and_the_full_run_searches_the_largest_batch(tmp_path):
    gc = _driver()
    gpu = gc.LIMITS["gpu"]
    assert gpu["pytest"] >= 180  # a cold Triton cache compiles every pinned config first
    with open(SCRIPT) as fh:  # the header's sizing is the driver's
        header = fh.read()
    listed = dict(re.findall(r"(\w+) (\d+) s", header.split("time: the GPU check", 1)[1].split("at most each")[0]))
    assert {k: int(v) for k, v in listed.items()} == gpu
    for full, want in ((True, ["--max-batch"]), (False, [])):
        args = gc.parse_args(["--full"] if full else [])
        steps = {s.name: s.command for s in gc.plan(args, str(tmp_path), str(tmp_path / "site"), sys.executable)}
        assert [a for a in steps["bench_step"] if a == "--max-batch"] == want
        assert all("--max-batch" not in c for n, c in steps.items() if n != "bench_step")


# ---------------------------------------------------------------- slow: the dry run itself

@pytest.mark.slow
def test_the_cpu_dry_run_passes_every_step_and_leaves_its_results(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run-cpu", str(out), "--work", str(tmp_path / "work"))
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = _statuses(summary)
    assert list(statuses) == ["install", "env", "build", "pytest", "bench_surgery", "bench_layerwise", "train",
                              "bench_step"]
    # pytest -m gpu selects only tests that skip without CUDA: "skipped", never "fail"
    assert statuses.pop("pytest") in ("pass", "skipped")
    assert set(statuses.values()) == {"pass"}, summary
    assert "all steps passed" in summary and "exit status 0" in summary
    for name in BENCH_JSON:
        record = json.loads((out / name).read_text())
        assert record["rows"], name
    train = json.loads((out / "bench_train_gpu.json").read_text())
    assert [r["mode"] for r in train["rows"]] == ["none", "feature", "layer", "both"]
    assert all(r["loss_finite"] for r in train["rows"])
    for step in statuses:
        assert (out / "logs" / f"{step}.log").stat().st_size > 0
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["final"] and record["env"]["cuda_available"] is False
    assert "### Training run" in summary and "### Fused objective" in summary
    if json.loads((out / "bench_surgery.json").read_text()).get("targets"):
        assert "The issue's targets" in summary
    assert re.search(r"\[\d/8\] train: pass in \d+\.\d s", proc.stdout)  # elapsed time printed per step


@pytest.mark.slow
def test_a_failed_and_a_timed_out_step_are_reported_and_the_later_steps_still_run(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run-cpu", str(out), "--work", str(tmp_path / "work"),
                "--steps", "bench_surgery,bench_layerwise,train", "--timeout", "bench_layerwise=2",
                env={"DGSNET_GPU_CHECK_FAIL": "bench_surgery"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert _statuses(summary) == {"bench_surgery": "fail", "bench_layerwise": "timeout", "train": "pass"}
    assert "2 step(s) did not pass: bench_surgery, bench_layerwise" in summary
    assert "killed after 2 s" in summary
    assert "injected failure" in (out / "logs" / "bench_surgery.log").read_text()
    assert json.loads((out / "bench_train_gpu.json").read_text())["rows"]
    assert not (out / "bench_surgery.json").exists()
