"""bench/bench_step.py's published-style competitor computes what dgsnet computes.

The benchmark times a re-written published structure (separate q/k/v LoRA linears, a separate
teacher copy, autograd.grad surgery with a feature hook, the per-patch selection loop) against
dgsnet; these tests hold it to dgsnet's specification (the reference objective and the
per-patch selection oracle), so the timing compares the same work. The bench scripts import
`common` from their folder: it is loaded here by file path, no sys.path change.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from tests.bench_modules import load_bench


@pytest.fixture
def bench_step(monkeypatch):
    return load_bench(monkeypatch, "bench_step")


@pytest.mark.parametrize("dtype,batch,tol", [(torch.float32, 3, 1e-4), (torch.float64, 5, 1e-9)])
def test_published_step_matches_dgsnet_feature_objective(bench_step, dtype, batch, tol):
    from dgsnet.models import BackboneSpec, LoRAConfig
    from dgsnet.models.backbone import create_clip

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        spec = BackboneSpec("dgs-tiny", None)
        clip = create_clip(spec)
        lora = LoRAConfig()
        model = bench_step.build_model(spec, clip, torch.device("cpu"))
        published = bench_step.PublishedStep(clip, spec, lora.rank, lora.alpha, lora.dropout, torch.device("cpu"))
        gen = torch.Generator().manual_seed(3)
        images = torch.randn(batch, 3, 224, 224, generator=gen, dtype=dtype)
        labels = torch.tensor([i % 2 for i in range(batch)], dtype=dtype)
        captions = [f"caption {i}" for i in range(batch)]
        worst = bench_step.check_agreement(model, published, images, labels, captions)
    finally:
        torch.set_default_dtype(previous)
    assert worst < tol
    # check_agreement made LoRA B non-zero: the comparison covered a real update
    assert all(p.abs().sum() > 0 for p in model.lora_parameters())


def test_published_step_disagrees_without_the_hook(bench_step):
    """The check can fail: the published step with its projection hook removed is another objective."""
    from dgsnet.models import BackboneSpec, LoRAConfig
    from dgsnet.models.backbone import create_clip

    spec = BackboneSpec("dgs-tiny", None)
    clip = create_clip(spec)
    lora = LoRAConfig()
    model = bench_step.build_model(spec, clip, torch.device("cpu"))
    published = bench_step.PublishedStep(clip, spec, lora.rank, lora.alpha, lora.dropout, torch.device("cpu"))
    original = published.loss

    def loss_without_hook(*args):
        loss = original(*args)
        published._hook.remove()
        return loss

    published.loss = loss_without_hook
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with pytest.raises(SystemExit, match="gradients differ"):
        bench_step.check_agreement(model, published, images, torch.tensor([0.0, 1.0, 1.0]), ["a", "b", "c"])


@pytest.mark.parametrize("size", [224, 291])
def test_published_tile_selects_the_patches_of_the_definition(bench_step, size):
    from PIL import Image

    from dgsnet.image.preprocess import select_patches_loop

    rng = np.random.default_rng(size)
    # a photo-like image: smooth gradients plus texture of varying strength per region
    y, x = np.mgrid[0:size, 0:size]
    base = (np.stack([x, y, x + y], -1) * 255.0 / (2 * size)).astype(np.float64)
    noise = rng.normal(0, 1, base.shape) * (x[..., None] // 32 % 4) * 10
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    tile = np.asarray(bench_step.published_tile(Image.fromarray(pixels), random.Random(0)))
    want = select_patches_loop(pixels)

    def patches(t):
        return sorted(t[r:r + 32, c:c + 32].tobytes() for r in range(0, 224, 32) for c in range(0, 224, 32))

    assert tile.shape == (224, 224, 3)
    assert patches(tile) == patches(want)


def test_published_tile_rejects_small_images(bench_step):
    from PIL import Image

    with pytest.raises(ValueError, match="fewer than 49 patches"):
        bench_step.published_tile(Image.new("RGB", (200, 250)), random.Random(0))


def _fake_oom_steps(fits_up_to, tried=None):
    def make_step_at(batch):
        def step():
            if tried is not None:
                tried.append(batch)
            if batch > fits_up_to:  # what a too-large batch does on a GPU
                raise torch.OutOfMemoryError(f"batch {batch} does not fit")
            return torch.zeros(batch)
        return step
    return make_step_at


def test_largest_batch_doubles_then_bisects(bench_step):
    cpu = torch.device("cpu")
    make_step_at = _fake_oom_steps(100)
    assert bench_step.largest_batch(make_step_at, 8, cpu) == 100  # 64 fits, 128 not: bisected to 100
    assert bench_step.largest_batch(make_step_at, 8, cpu, granularity=8) == 96
    assert bench_step.largest_batch(make_step_at, 128, cpu) == 0
    assert bench_step.largest_batch(make_step_at, 3, cpu, limit=20) == 20  # never above the limit
    assert bench_step.largest_batch(make_step_at, 100, cpu) == 100  # the start itself, nothing above
    assert bench_step.largest_batch(_fake_oom_steps(10 ** 9), 8, cpu, limit=4096) == 4096
    for fits_up_to in (1, 7, 31, 32, 33, 255):  # any boundary is found exactly
        assert bench_step.largest_batch(_fake_oom_steps(fits_up_to), 1, cpu) == fits_up_to


def test_largest_batch_bisection_tries_few_batches(bench_step):
    tried = []
    assert bench_step.largest_batch(_fake_oom_steps(300, tried), 32, torch.device("cpu"), granularity=8) == 296
    batches = sorted(set(tried))
    assert batches[:4] == [32, 64, 128, 256] and 512 in batches  # doubling, then between 256 and 512
    assert len(batches) <= 5 + 5  # log2(256 / 8) probes of the bisection at most


def test_max_batch_covers_every_step_competitor(bench_step, monkeypatch):
    """The memory search runs for published, floor and each surgery mode; with a fake OOM (a CPU
    stand-in for the GPU's) each gets its own largest batch, timed there."""
    from dgsnet.models import BackboneSpec, LoRAConfig
    from dgsnet.models.backbone import create_clip

    spec = BackboneSpec("dgs-tiny", None)
    clip = create_clip(spec)
    lora = LoRAConfig()
    cpu = torch.device("cpu")
    model = bench_step.build_model(spec, clip, cpu)
    makers = bench_step.max_batch_makers(clip, spec, lora, model, cpu, None)
    assert list(makers) == ["published", "floor", "none", "feature", "layer", "both"]
    for make in makers.values():  # each builds a runnable step
        make(2)()
    limits = {name: 2 + i for i, name in enumerate(makers)}

    def fake_makers(*args):
        return {name: _fake_oom_steps(limit) for name, limit in limits.items()}

    monkeypatch.setattr(bench_step, "max_batch_makers", fake_makers)
    monkeypatch.setattr(bench_step, "peak_memory_bytes", lambda fn, device: None)
    rows = bench_step.max_batch_rows(clip, spec, lora, model, 1, cpu, None, repeats=1, granularity=1)
    assert {r["competitor"]: r["batch"] for r in rows} == limits
    assert all(r["step_ms"] > 0 for r in rows)


def test_targets_pass_and_fail(bench_step):
    rows = bench_step.target_checks({"loop_vs_published_loop": 2.5, "loop_vs_model_only": 0.8,
                                     "feature_vs_floor": 1.04})
    assert [(r["ratio"], r["pass"]) for r in rows] == [("loop_vs_published_loop", True),
                                                        ("loop_vs_model_only", False),
                                                        ("feature_vs_floor", True)]
    rows = bench_step.target_checks({"loop_vs_model_only": 1 / 1.2, "feature_vs_floor": 1.06})
    assert [r["pass"] for r in rows] == [None, True, False]


def test_loop_is_measured_at_a_log_cadence(bench_step):
    assert bench_step.loop_windows(12, 3) == 1 and bench_step.loop_windows(3, 7) == 3


def test_paired_ratio_alternates_the_order_and_takes_the_median_of_pairs(bench_step, monkeypatch):
    """With a fake clock: base costs 2, other 3, except that the second call of a pair costs 1 more
    (a machine that slows within a pair): alternating the order cancels it in the median."""
    common = sys.modules["common"]
    clock = {"now": 0.0, "calls": []}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["now"])

    def timed(name, cost):
        def fn():
            second = len(clock["calls"]) % 2 == 1
            clock["calls"].append(name)
            clock["now"] += cost + (1.0 if second else 0.0)
        return fn

    got = common.paired_ratio(timed("base", 2.0), timed("other", 3.0), torch.device("cpu"), 40)
    assert clock["calls"][:4] == ["base", "other", "other", "base"]
    # pairs give 4/2 (other second) and 3/3 (other first): median of twenty 2.0 and twenty 1.0
    assert got["median"] == pytest.approx(1.5) and got["pairs"] == 40
    assert (got["q1"], got["q3"]) == (pytest.approx(1.0), pytest.approx(2.0))
