"""LoRA on open_clip's packed q/k/v projection: exact start, merge, SDPA, teacher = LoRA off."""
import pytest
import torch
import torch.nn.functional as F

from dgsnet.models import (BackboneSpec, DGSNetModel, LoRAConfig, create_clip, lora_modules, merge_lora,
                           unmerge_lora)

TINY = BackboneSpec("dgs-tiny", pretrained=None)


@pytest.fixture(scope="module")
def model():
    m = DGSNetModel(TINY, LoRAConfig(dropout=0.0)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in lora_modules(m.visual):
            for _, a, b in mod.lora_pairs():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))


def test_zero_init_lora_reproduces_open_clip():
    fresh = DGSNetModel(TINY).eval()
    clip = create_clip(TINY)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(fresh.student_features(x), clip.visual(x), rtol=1e-5, atol=1e-5)


def test_merge_matches_unmerged_and_unmerge_restores(model, images):
    base_weights = [m.base.in_proj_weight.clone() for m in lora_modules(model.visual)]
    with torch.no_grad():
        unmerged = model.student_features(images)
        merge_lora(model.visual)
        merged = model.student_features(images)
        unmerge_lora(model.visual)
        again = model.student_features(images)
    assert (unmerged - model.teacher_features(images)).abs().max() > 1e-3  # LoRA does something
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-5)
    for m, w in zip(lora_modules(model.visual), base_weights):
        torch.testing.assert_close(m.base.in_proj_weight, w, rtol=0, atol=1e-6)


def test_detector_is_plain_open_clip_with_merged_weights(model, images):
    det = model.detector()
    assert not lora_modules(det.visual)
    assert all(isinstance(b.attn, torch.nn.MultiheadAttention) for b in det.visual.transformer.resblocks)
    with torch.no_grad():
        want = model.student_head(model.student_features(images)).squeeze(-1)
        torch.testing.assert_close(det(images), want, rtol=1e-5, atol=1e-5)


def test_teacher_is_the_encoder_before_fine_tuning(model, images):
    clip = create_clip(TINY)
    with torch.no_grad():
        torch.testing.assert_close(model.teacher_features(images), clip.visual(images), rtol=1e-5, atol=1e-5)
    assert all(m.enabled for m in lora_modules(model.visual))  # switched back on afterwards


def test_attention_runs_through_sdpa(model, images, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model.student_features(images)
    assert len(calls) == len(model.visual.transformer.resblocks)


def test_only_lora_and_heads_get_gradients():
    m = DGSNetModel(TINY)
    m.set_stage(2)
    feats = m.student_features(torch.randn(2, 3, 224, 224))
    (m.student_head(feats).sum() + m.text_head(feats.detach()).sum()).backward()
    named = dict(m.named_parameters())
    with_grad = {n for n, p in named.items() if p.grad is not None}
    assert with_grad and all(("_A" in n or "_B" in n or "student_head" in n or "text_head" in n)
                             for n in with_grad)
    assert not any(n.startswith("teacher_head") for n in with_grad)


@pytest.mark.parametrize("targets,blocks,rank", [(("q", "k", "v"), "all", 6), (("q", "v"), [-1], 3)])
def test_parameter_counts(targets, blocks, rank):
    m = DGSNetModel(TINY, LoRAConfig(rank=rank, targets=targets, blocks=blocks))
    n_blocks = 2 if blocks == "all" else len(blocks)
    width = 64
    report = m.parameter_report()
    assert report["lora"] == n_blocks * len(targets) * 2 * rank * width
    m.set_stage(2)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == report["lora"] + 2 * (64 + 1)
    m.set_stage(1)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 64 + 1


def test_bad_lora_configs():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="targets"):
        LoRAConfig(targets=("q", "o"))
    with pytest.raises(ValueError, match="out of range"):
        DGSNetModel(TINY, LoRAConfig(blocks=[5]))
