"""bench/bench_step.py's published-style competitor computes what dgsnet computes.

The benchmark times a re-written published structure (separate q/k/v LoRA linears, a separate
teacher copy, autograd.grad surgery with a feature hook, the per-patch selection loop) against
dgsnet; these tests hold it to dgsnet's specification (the reference objective and the
per-patch selection oracle), so the timing compares the same work. The bench scripts import
`common` from their folder: it is loaded here by file path, no sys.path change.
"""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def bench_step(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # the module sets them on import; keep the change to this test
    modules = {}
    for name in ("common", "bench_step"):
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        modules[name] = module
    return modules["bench_step"]


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


def test_largest_batch_doubles_until_out_of_memory(bench_step):
    def make_step_at(batch):
        def step():
            if batch > 100:  # what a too-large batch does on a GPU
                raise torch.OutOfMemoryError(f"batch {batch} does not fit")
            return torch.zeros(batch)
        return step

    cpu = torch.device("cpu")
    assert bench_step.largest_batch(make_step_at, 8, cpu) == 64
    assert bench_step.largest_batch(make_step_at, 128, cpu) == 0
    assert bench_step.largest_batch(make_step_at, 3, cpu, limit=20) == 12
