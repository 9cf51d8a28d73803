"""Two processes (torchrun, gloo, real torch.distributed) against one process on the combined batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

from dgsnet.models import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = ["-m", "tests.train.dist_worker"]  # a module of the tests package, run from ROOT
# No dropout: the two layouts draw different dropout masks by design (per-rank streams).
BASE = dict(model="dgs-tiny", pretrained=None, workers=0, lr=2e-3, teacher_lr=2e-2, log_every=1,
            ckpt_every=2, lora_dropout=0.0, flip_prob=0.0)


def run(nproc, spec, env=None, check=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--standalone", *WORKER, json.dumps(spec)] if nproc > 1 else [sys.executable, *WORKER,
                                                                                 json.dumps(spec)]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    full_env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_same_weights(a, b, rtol=1e-4, atol=2e-6):
    want, got = ckpt.read_model_tensors(a), ckpt.read_model_tensors(b)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "teacher")
    run(1, dict(BASE, stage=1, out=out, batch_size=8, teacher_epochs=1))
    return out


@pytest.mark.slow
def test_stage1_two_processes_match_one_on_the_combined_batch(tmp_path, teacher):
    two = str(tmp_path / "two")
    run(2, dict(BASE, stage=1, out=two, batch_size=4, teacher_epochs=1))
    assert_same_weights(teacher, two)


@pytest.mark.slow
@pytest.mark.parametrize("surgery,accum", [("feature", 1), ("layer", 2)])
def test_stage2_two_processes_match_one_on_the_combined_batch(tmp_path, teacher, surgery, accum):
    spec = dict(BASE, stage=2, teacher=teacher, epochs=1, surgery=surgery, accum=accum, max_steps=4)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(1, dict(spec, out=one, batch_size=8))
    run(2, dict(spec, out=two, batch_size=4))
    assert_same_weights(one, two)
    # and the surgery mattered: plain fine-tuning ends elsewhere
    plain = str(tmp_path / "plain")
    run(1, dict(spec, out=plain, batch_size=8, surgery="none"))
    with pytest.raises(AssertionError):
        assert_same_weights(one, plain)
    with open(os.path.join(two, "log.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if '"train"' in line]
    assert rows and all("loss_align" in r for r in rows)


@pytest.mark.slow
def test_two_process_resume_continues_the_run(tmp_path, teacher):
    spec = dict(BASE, stage=2, teacher=teacher, epochs=1, batch_size=4, ckpt_every=2, lora_dropout=0.5)
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    run(2, dict(spec, out=full))
    # 48 images / (4 x 2) = 6 steps; dying in step 4 leaves the step-2 checkpoint
    died = run(2, dict(spec, out=cut), env={"DIE_AFTER_ITEMS": str(4 * 3 + 2)}, check=False)
    assert died.returncode != 0
    state = json.load(open(os.path.join(cut, "resume", "state.json")))
    assert state["position"]["step"] == 2
    run(2, dict(spec, out=cut, resume=True))
    assert_same_weights(full, cut, rtol=0, atol=0)


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_resume(tmp_path, teacher):
    spec = dict(BASE, stage=2, teacher=teacher, epochs=1, surgery="feature", accum=2, ckpt_every=1)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run(1, dict(spec, out=one, batch_size=8))
    run(2, dict(spec, out=two, batch_size=4, fsdp=True))
    assert_same_weights(one, two)
    with open(os.path.join(two, "log.txt")) as fh:
        line = next(l for l in fh if "FSDP" in l)
    local, total = (int(x.replace(",", "")) for x in line.split("holds ")[1].split(" encoder")[0].split(" of "))
    assert local < 0.6 * total  # the rank really holds about half of the encoder
    # an interrupted sharded run resumes (from the full-tensor checkpoint) to the same end
    cut = str(tmp_path / "cut")
    died = run(2, dict(spec, out=cut, batch_size=4, fsdp=True), env={"DIE_AFTER_ITEMS": str(4 * 5 + 2)},
               check=False)
    assert died.returncode != 0
    assert json.load(open(os.path.join(cut, "resume", "state.json")))["position"]["step"] == 2
    run(2, dict(spec, out=cut, batch_size=4, fsdp=True, resume=True))
    assert_same_weights(two, cut, rtol=0, atol=0)


def test_fsdp_refuses_layer_surgery_and_a_single_process(tmp_path, teacher):
    spec = dict(BASE, stage=2, teacher=teacher, epochs=1, batch_size=4, fsdp=True)
    proc = run(2, dict(spec, out=str(tmp_path / "a"), surgery="layer"), check=False)
    assert proc.returncode != 0 and "--fsdp supports --surgery none or feature" in proc.stderr
    proc = run(1, dict(spec, out=str(tmp_path / "b")), check=False)
    assert proc.returncode != 0 and "torchrun" in proc.stderr
