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
    with pytest.raises(ValueError, match="scaling"):
        LoRAConfig(scaling="rank")
    with pytest.raises(ValueError, match="dropout_masks"):
        LoRAConfig(dropout_masks="one")


def _packed_forward(mod, x):
    """q/k/v of the wrapped attention written out: x W^T + b + scale * x A^T B^T per target."""
    w, b = mod.base.in_proj_weight, mod.base.in_proj_bias
    return F.linear(x, w, b) + torch.cat([mod.scale * F.linear(F.linear(x, a), bb) for _, a, bb in mod.lora_pairs()],
                                         dim=-1)


@pytest.mark.parametrize("scaling,rank,alpha,want", [("sqrt", 6, 6.0, 6 / 6 ** 0.5), ("linear", 6, 6.0, 1.0),
                                                     ("sqrt", 4, 8.0, 4.0), ("linear", 4, 8.0, 2.0)])
def test_lora_scale_is_what_the_config_says(scaling, rank, alpha, want):
    """Published CLIP-LoRA scales by alpha / sqrt(r) (2.449 at r=6, alpha=6), not alpha / r."""
    cfg = LoRAConfig(rank=rank, alpha=alpha, scaling=scaling, dropout=0.0)
    assert cfg.scale == pytest.approx(want, rel=1e-15)
    m = DGSNetModel(TINY, cfg).double().eval()
    mod = lora_modules(m.visual)[0]
    with torch.no_grad():
        for _, _, b in mod.lora_pairs():
            b.normal_()
        x = torch.randn(2, 5, 64, dtype=torch.float64)
        got = F.linear(x, mod.base.in_proj_weight, mod.base.in_proj_bias) + mod._lora_qkv(x)
        torch.testing.assert_close(got, _packed_forward(mod, x), rtol=1e-12, atol=1e-12)


def _lora_outputs(masks: str, seed: int = 0):
    m = DGSNetModel(TINY, LoRAConfig(rank=2, dropout=0.5, dropout_masks=masks)).train()
    mod = lora_modules(m.visual)[0]
    with torch.no_grad():  # identical q, k and v LoRA: the outputs differ only by their dropout masks
        a0, b0 = torch.randn(2, 64), torch.randn(64, 2)
        for _, a, b in mod.lora_pairs():
            a.copy_(a0)
            b.copy_(b0)
        torch.manual_seed(seed)
        return mod._lora_qkv(torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))).chunk(3, dim=-1)


def test_separate_dropout_masks_per_projection():
    q, k, v = _lora_outputs("separate")
    assert (q - k).abs().max() > 1e-3 and (k - v).abs().max() > 1e-3
    q, k, v = _lora_outputs("shared")
    torch.testing.assert_close(q, k, rtol=1e-4, atol=1e-4)  # one mask: equal up to matmul rounding
    torch.testing.assert_close(k, v, rtol=1e-4, atol=1e-4)


def test_separate_masks_do_not_change_eval_or_merge():
    """Dropout is off in eval: separate masks, shared mask and the merged weights all agree."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    outs = []
    for masks in ("separate", "shared"):
        torch.manual_seed(0)
        m = DGSNetModel(TINY, LoRAConfig(dropout=0.8, dropout_masks=masks)).eval()
        with torch.no_grad():
            for mod in lora_modules(m.visual):
                for _, _, b in mod.lora_pairs():
                    b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(5)) * 0.05)
            outs.append(m.student_features(x))
            outs.append(m.detector().visual(x))
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-5)


def test_old_checkpoints_load_with_the_behaviour_they_were_trained_with(tmp_path):
    """model.json files written before scaling/dropout_masks existed mean linear scaling + one mask."""
    import json

    from dgsnet.models import checkpoint as ckpt

    m = DGSNetModel(TINY, LoRAConfig(scaling="linear", dropout_masks="shared"))
    ckpt.write_model(str(tmp_path), m, stage=2, config={}, step=0)
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    for key in ("scaling", "dropout_masks"):
        del meta["lora"][key]
    meta_path.write_text(json.dumps(meta))
    loaded, _ = ckpt.load_model(str(tmp_path))
    assert loaded.lora_config.scaling == "linear" and loaded.lora_config.dropout_masks == "shared"
    assert lora_modules(loaded.visual)[0].scale == 1.0
    assert LoRAConfig().scaling == "sqrt" and LoRAConfig().dropout_masks == "separate"


@pytest.mark.parametrize("p", [0.8, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_lora_dropout_cpu_mask_is_nn_dropouts_distribution(p, dtype):
    """The CPU draw (uniforms >= p) keeps each value with probability 1 - p and scales kept ones by
    1 / (1 - p), as nn.Dropout does; its gradient is the same mask times the same scale."""
    from dgsnet.models.lora import LoRADropout

    drop = LoRADropout(p).train()
    x = (torch.rand(200, 500, dtype=torch.float64) + 1.0).to(dtype).requires_grad_(True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * sd  # 5 standard deviations: not flaky
    want = (x.detach() / (1 - p)) if dtype != torch.bfloat16 else (x.detach() * (1.0 / (1 - p)))
    torch.testing.assert_close(y[kept], want[kept])
    assert y.dtype == dtype
    y.sum().backward()
    torch.testing.assert_close(x.grad, (kept.to(dtype) * (1.0 / (1 - p))).to(dtype))
    # the same seed gives the same mask; another seed another one
    torch.manual_seed(0)
    assert torch.equal(drop(x.detach()) != 0, kept)
    assert not torch.equal(drop(x.detach()) != 0, kept)


def test_lora_dropout_is_identity_in_eval_and_at_zero_and_drops_all_at_one():
    from dgsnet.models.lora import LoRADropout

    x = torch.randn(4, 9)
    assert torch.equal(LoRADropout(0.8).eval()(x), x)
    assert torch.equal(LoRADropout(0.0).train()(x), x)
    assert torch.equal(LoRADropout(1.0).train()(x), torch.zeros_like(x))
    # rows independent: no two rows of a large draw share their mask
    masks = LoRADropout(0.5).train()(torch.ones(64, 256)) != 0
    assert len({tuple(r.tolist()) for r in masks}) == 64
