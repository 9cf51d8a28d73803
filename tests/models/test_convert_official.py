"""`dgsnet convert-official` on files written in the published DGS-Net layout.

The image path of the reference model below is this test's own code (published
naming: separate q/k/v projections with LoRA A/B and scale alpha / sqrt(r), out
projection `proj`, QuickGELU MLPs), independent of dgsnet's modules; only the
text tower's keys and weights come from open_clip. Converted runs must give the
reference logits through `load_model(run).detector()`.
"""
import json
import math
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgsnet.cli import main
from dgsnet.models.checkpoint import load_model

WIDTH, LAYERS, PATCH, IMAGE, EMBED = 64, 3, 32, 224, 32
HEADS = WIDTH // 64
RANK, ALPHA = 6, 6.0
SCALE = ALPHA / math.sqrt(RANK)


# ------------------------------------------------------------------ the reference model

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class LoRALinear(nn.Module):
    """y = x W^T + b + scale * (x A^T) B^T (the published LinearLoRA, unmerged)."""

    def __init__(self, dim, gen):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim, generator=gen) / math.sqrt(dim))
        self.bias = nn.Parameter(0.1 * torch.randn(dim, generator=gen))
        self.w_lora_A = nn.Parameter(0.1 * torch.randn(RANK, dim, generator=gen))
        self.w_lora_B = nn.Parameter(0.05 * torch.randn(dim, RANK, generator=gen))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + SCALE * F.linear(F.linear(x, self.w_lora_A), self.w_lora_B)


class Attention(nn.Module):
    def __init__(self, dim, gen):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (LoRALinear(dim, gen) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, dim, generator=gen) / math.sqrt(dim))
            self.proj.bias.copy_(0.1 * torch.randn(dim, generator=gen))

    def forward(self, x):  # (N, L, D)
        n, length, d = x.shape
        q, k, v = (p(x).reshape(n, length, HEADS, d // HEADS).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // HEADS), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, length, d))


def _layer_norm(dim, gen):
    ln = nn.LayerNorm(dim)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.1 * torch.randn(dim, generator=gen))
        ln.bias.copy_(0.1 * torch.randn(dim, generator=gen))
    return ln


def _linear(n_in, n_out, gen, std):
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(std * torch.randn(n_out, n_in, generator=gen))
        lin.bias.copy_(0.1 * torch.randn(n_out, generator=gen))
    return lin


class Block(nn.Module):
    def __init__(self, dim, gen):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = _layer_norm(dim, gen), Attention(dim, gen), _layer_norm(dim, gen)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", _linear(dim, 4 * dim, gen, dim ** -0.5)),
                                              ("gelu", QuickGELU()),
                                              ("c_proj", _linear(4 * dim, dim, gen, (4 * dim) ** -0.5))]))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, dim, gen):
        super().__init__()
        self.resblocks = nn.ModuleList(Block(dim, gen) for _ in range(LAYERS))


class Visual(nn.Module):
    def __init__(self, gen):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        with torch.no_grad():
            self.conv1.weight.copy_(0.02 * torch.randn(self.conv1.weight.shape, generator=gen))
        self.class_embedding = nn.Parameter(0.1 * torch.randn(WIDTH, generator=gen))
        grid = IMAGE // PATCH
        self.positional_embedding = nn.Parameter(0.1 * torch.randn(grid * grid + 1, WIDTH, generator=gen))
        self.ln_pre = _layer_norm(WIDTH, gen)
        self.transformer = Transformer(WIDTH, gen)
        self.ln_post = _layer_norm(WIDTH, gen)
        self.proj = nn.Parameter(torch.randn(WIDTH, EMBED, generator=gen) / math.sqrt(WIDTH))

    def forward(self, images):
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (N, grid^2, D)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


class Reference(nn.Module):
    """Published image path: clip_model.encode_image -> img_fc (and the frozen teacher probe)."""

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.visual = Visual(gen)
        self.img_fc = _linear(EMBED, 1, gen, 0.3)

    def forward(self, images):
        return self.img_fc(self.visual(images)).squeeze(-1)


def lora_layers(ref):
    for i, block in enumerate(ref.visual.transformer.resblocks):
        for t in "qkv":
            yield i, t, getattr(block.attn, f"{t}_proj")


def frozen_visual(ref):
    """The reference's pretrained image tower in OpenAI naming (packed in_proj, out_proj)."""
    out = {}
    for k, v in ref.visual.state_dict().items():
        if ".attn." not in k:
            out[k] = v.clone()
    for i, block in enumerate(ref.visual.transformer.resblocks):
        p, a = f"transformer.resblocks.{i}.attn.", block.attn
        out[p + "in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach().clone()
        out[p + "in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).detach().clone()
        out[p + "out_proj.weight"] = a.proj.weight.detach().clone()
        out[p + "out_proj.bias"] = a.proj.bias.detach().clone()
    return out


def text_tower():
    """An OpenAI-layout text tower (keys and weights from a tiny open_clip CLIP)."""
    from open_clip.model import CLIP

    torch.manual_seed(1)
    clip = CLIP(EMBED, vision_cfg={"image_size": IMAGE, "layers": 1, "width": WIDTH, "patch_size": PATCH},
                text_cfg={"context_length": 77, "vocab_size": 500, "width": 64, "heads": 1, "layers": 2},
                quick_gelu=True)
    return {k: v.clone() for k, v in clip.state_dict().items() if not k.startswith("visual.")}


def published_state(ref, text, merged=False):
    """The published model_epoch_step2.pth of the reference (student weights merged or not)."""
    student = {f"visual.{k}": v.detach().clone() for k, v in ref.visual.state_dict().items()}
    if merged:  # the published eval(): weight.data += (B @ A) * scaling, in the weights' dtype
        for i, t, layer in lora_layers(ref):
            key = f"visual.transformer.resblocks.{i}.attn.{t}_proj.weight"
            student[key] = student[key] + (layer.w_lora_B @ layer.w_lora_A).detach() * SCALE
    gen = torch.Generator().manual_seed(7)
    state = {"clip_model." + k: v for k, v in {**student, **text}.items()}
    frozen = {**{f"visual.{k}": v for k, v in frozen_visual(ref).items()}, **text}
    state.update({"clip_model_frozen.clip_model_frozen." + k: v.clone() for k, v in frozen.items()})
    state["clip_model_frozen.img_frozen_fc.weight"] = 0.3 * torch.randn(1, EMBED, generator=gen)
    state["clip_model_frozen.img_frozen_fc.bias"] = torch.randn(1, generator=gen)
    state["img_fc.weight"] = ref.img_fc.weight.detach().clone()
    state["img_fc.bias"] = ref.img_fc.bias.detach().clone()
    state["text_fc.weight"] = 0.3 * torch.randn(1, EMBED, generator=gen)
    state["text_fc.bias"] = torch.randn(1, generator=gen)
    return state


def twice_merged_reference(ref, merged_state):
    """What the published test.py computes on a merged file: stored (merged) weights + the update again."""
    import copy

    again = copy.deepcopy(ref)
    with torch.no_grad():
        for i, t, layer in lora_layers(again):
            layer.weight.copy_(merged_state[f"clip_model.visual.transformer.resblocks.{i}.attn.{t}_proj.weight"])
    return again


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    ref, text = Reference().eval(), text_tower()
    states = {"unmerged": published_state(ref, text), "merged": published_state(ref, text, merged=True)}
    paths = {}
    for name, state in states.items():
        paths[name] = str(root / f"{name}_model_epoch_step2.pth")
        torch.save(state, paths[name])
    s2 = states["unmerged"]
    frozen = "clip_model_frozen.clip_model_frozen."
    stage1 = {"clip_model_frozen." + k[len(frozen):]: v for k, v in s2.items() if k.startswith(frozen)}
    stage1.update({k: s2["clip_model_frozen." + k] for k in ("img_frozen_fc.weight", "img_frozen_fc.bias")})
    paths["stage1"] = str(root / "model_epoch_step1.pth")
    torch.save(stage1, paths["stage1"])
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    return {"ref": ref, "states": states, "paths": paths, "images": images, "root": root, "stage1": stage1}


def convert(argv, capsys):
    code = main(["convert-official", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def logits(run, images, double):
    model, meta = load_model(run)
    if double:
        model = model.double()
        images = images.double()
    with torch.no_grad():
        return model.detector()(images), meta


def reference_logits(ref, images, double):
    import copy

    ref = copy.deepcopy(ref)
    if double:
        ref, images = ref.double(), images.double()
    with torch.no_grad():
        return ref(images)


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", ["unmerged", "merged"])
def test_converted_run_gives_the_reference_logits(files, tmp_path, capsys, kind):
    run = str(tmp_path / "run")
    code, out, err = convert([files["paths"][kind], "--out", run], capsys)
    assert code == 0, err
    assert ("merged (scale" in out) == (kind == "merged") and "frozen-tensor mismatches: none" in out
    for double, tol in ((True, 1e-9), (False, 1e-5)):
        got, meta = logits(run, files["images"], double)
        want = reference_logits(files["ref"], files["images"], double)
        assert got.dtype == want.dtype == (torch.float64 if double else torch.float32)
        assert (got - want).abs().max().item() <= tol, (kind, double)
    record = meta["converted_from"]
    assert record["merged"] is (kind == "merged") and record["as_published_test"] is False
    assert record["mismatches"] == [] and len(record["sha256"]) == 64
    assert meta["stage"] == 2 and meta["norm"] == "imagenet"
    with open(os.path.join(run, "model.json")) as fh:
        backbone = json.load(fh)["backbone"]
    assert (backbone["model"], backbone["pretrained"]) == ("backbone.json", "backbone.safetensors")
    assert meta["lora"]["rank"] == RANK and meta["lora"]["alpha"] == ALPHA and meta["lora"]["scaling"] == "sqrt"
    with open(os.path.join(run, "backbone.json")) as fh:
        cfg = json.load(fh)
    assert cfg["quick_gelu"] is True and cfg["vision_cfg"]["layers"] == LAYERS
    assert cfg["vision_cfg"]["patch_size"] == PATCH and cfg["vision_cfg"]["image_size"] == IMAGE
    assert not os.path.exists(run + ".tmp")
    # the run directory can move: its backbone files are recorded relative to it
    moved = str(tmp_path / "moved")
    os.rename(run, moved)
    got, _ = logits(moved, files["images"], False)
    assert (got - reference_logits(files["ref"], files["images"], False)).abs().max().item() <= 1e-5


def test_as_published_test_applies_the_update_twice_to_a_merged_file(files, tmp_path, capsys):
    """Bypassing the merge detection (published test.py on a merged file) gives W0 + 2 s B A: other logits."""
    images, ref = files["images"], files["ref"]
    run = str(tmp_path / "published")
    code, out, err = convert([files["paths"]["merged"], "--out", run, "--as-published-test"], capsys)
    assert code == 0, err
    got, meta = logits(run, images, True)
    assert meta["converted_from"]["as_published_test"] is True and meta["converted_from"]["merged"] is True
    trained = reference_logits(ref, images, True)
    assert (got - trained).abs().max().item() > 1e-3  # not the trained model
    twice = reference_logits(twice_merged_reference(ref, files["states"]["merged"]), images, True)
    assert (got - twice).abs().max().item() <= 1e-9  # exactly what the published test computes
    # on an unmerged file both options are the same model
    run2 = str(tmp_path / "published_unmerged")
    assert convert([files["paths"]["unmerged"], "--out", run2, "--as-published-test"], capsys)[0] == 0
    assert (logits(run2, images, True)[0] - trained).abs().max().item() <= 1e-9


def test_wrong_lora_alpha_is_refused_and_the_fitting_alpha_named(files, tmp_path, capsys):
    run = str(tmp_path / "run")
    code, _, err = convert([files["paths"]["merged"], "--out", run, "--lora-alpha", "3"], capsys)
    assert code == 2
    assert "neither" in err and "--lora-alpha 6" in err and "not 3" in err
    assert not os.path.exists(run) and not os.path.exists(run + ".tmp")


def test_swapped_q_and_k_are_detected(files, tmp_path, capsys):
    state = dict(files["states"]["unmerged"])
    for i in range(LAYERS):
        p = f"clip_model.visual.transformer.resblocks.{i}.attn."
        for kind in ("weight", "bias"):
            q, k = p + f"q_proj.{kind}", p + f"k_proj.{kind}"
            state[q], state[k] = state[k], state[q]
    path = str(tmp_path / "swapped.pth")
    torch.save(state, path)
    code, _, err = convert([path, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "swapped" in err and "frozen copy's k slice" in err


def test_frozen_tensor_mismatch_is_reported_by_name(files, tmp_path, capsys):
    state = dict(files["states"]["unmerged"])
    bad = ["clip_model.visual.ln_pre.weight", "clip_model.visual.transformer.resblocks.1.attn.v_proj.bias",
           "clip_model.ln_final.bias"]
    for key in bad:
        state[key] = state[key] + 0.5
    path = str(tmp_path / "drifted.pth")
    torch.save(state, path)
    run = str(tmp_path / "run")
    code, out, err = convert([path, "--out", run], capsys)
    assert code == 0, err
    assert "warning" in err and all(key in err for key in bad)
    got, meta = logits(run, files["images"], False)
    recorded = meta["converted_from"]["mismatches"]
    assert sorted(m["name"] for m in recorded) == sorted(bad)
    assert any(m["frozen"].endswith("in_proj_bias[128:192]") for m in recorded)  # v slice of the packed bias
    # the frozen copy wins: the logits are still the reference's
    assert (got - reference_logits(files["ref"], files["images"], False)).abs().max().item() <= 1e-5


def test_other_layouts_are_refused_naming_missing_keys(files, tmp_path, capsys):
    state = {k: v for k, v in files["states"]["unmerged"].items()
             if not k.startswith("clip_model_frozen.clip_model_frozen.")}
    path = str(tmp_path / "no_frozen.pth")
    torch.save(state, path)
    code, _, err = convert([path, "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "missing keys" in err and "clip_model_frozen.clip_model_frozen.visual.conv1.weight" in err
    assert "stage-2 layout" in err
    # a plain OpenAI CLIP state dict
    plain = str(tmp_path / "plain.pth")
    torch.save({k[len("clip_model_frozen.clip_model_frozen."):]: v for k, v in files["states"]["unmerged"].items()
                if k.startswith("clip_model_frozen.clip_model_frozen.")}, plain)
    code, _, err = convert([plain, "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "missing keys" in err and "unexpected keys" in err and "visual.conv1.weight" in err
    # one tensor missing from an otherwise published file, and the wrapper/prefix forms are accepted
    state = dict(files["states"]["unmerged"])
    del state["clip_model.visual.transformer.resblocks.2.attn.k_proj.w_lora_B"]
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    code, _, err = convert([path, "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "clip_model.visual.transformer.resblocks.2.attn.k_proj.w_lora_B" in err
    assert not any(p.name.startswith(("a", "b", "c")) for p in tmp_path.iterdir())


def test_existing_run_directory_is_refused(files, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    code, _, err = convert([files["paths"]["unmerged"], "--out", str(run)], capsys)
    assert code == 2 and "not an empty directory" in err and (run / "keep.txt").read_text() == "x"


def test_stage1_file_converts_to_a_teacher_run_and_checks_a_stage2_file(files, tmp_path, capsys):
    run = str(tmp_path / "teacher")
    code, out, err = convert([files["paths"]["stage1"], "--out", run], capsys)
    assert code == 0, err
    assert "(stage 1)" in out
    model, meta = load_model(run)
    assert meta["stage"] == 1 and meta["converted_from"]["layout"] == "stage1"
    stage1 = files["stage1"]
    assert torch.equal(model.teacher_head.weight, stage1["img_frozen_fc.weight"])
    assert torch.equal(model.teacher_head.bias, stage1["img_frozen_fc.bias"])
    # the teacher probe = the pretrained image tower (no LoRA) + img_frozen_fc
    import copy

    ref = copy.deepcopy(files["ref"])
    with torch.no_grad():
        for _, _, layer in lora_layers(ref):
            layer.w_lora_B.zero_()
        ref.img_fc.weight.copy_(stage1["img_frozen_fc.weight"])
        ref.img_fc.bias.copy_(stage1["img_frozen_fc.bias"])
        want = ref.double()(files["images"].double())
        got = model.double().teacher_detector()(files["images"].double())
    assert (got - want).abs().max().item() <= 1e-9
    # --stage1 next to the matching stage-2 file: no differences; a changed head: reported by name
    code, _, err = convert([files["paths"]["unmerged"], "--stage1", files["paths"]["stage1"],
                            "--out", str(tmp_path / "s2")], capsys)
    assert code == 0 and "warning: --stage1" not in err
    changed = dict(stage1)
    changed["img_frozen_fc.bias"] = changed["img_frozen_fc.bias"] + 1
    other = str(tmp_path / "other_step1.pth")
    torch.save(changed, other)
    code, _, err = convert([files["paths"]["unmerged"], "--stage1", other, "--out", str(tmp_path / "s2b")], capsys)
    assert code == 0 and "img_frozen_fc.bias" in err
    _, meta = load_model(str(tmp_path / "s2b"))
    assert [m["name"] for m in meta["converted_from"]["stage1"]["mismatches"]] == ["img_frozen_fc.bias"]


def test_layers_with_zero_lora_update_are_undecidable_and_decided_from_the_others(files):
    from dgsnet.convert_official import (FROZEN, STUDENT, detect_merge, infer_architecture, lora_layout,
                                         with_prefix)

    state = dict(files["states"]["merged"])
    p = "visual.transformer.resblocks.0.attn.q_proj."
    state[STUDENT + p + "w_lora_B"] = torch.zeros(WIDTH, RANK)  # no update: merged == unmerged here
    state[STUDENT + p + "weight"] = state[FROZEN + "visual.transformer.resblocks.0.attn.in_proj_weight"][:WIDTH]
    student, frozen = with_prefix(state, STUDENT), with_prefix(state, FROZEN)
    lora = lora_layout(student, infer_architecture(frozen, FROZEN), "file")
    report = detect_merge(student, frozen, lora, WIDTH, ALPHA, "file")
    assert report.merged is True and report.decided == 3 * LAYERS - 1
    assert report.undecidable == [STUDENT + p + "weight"]
    for i in range(LAYERS):  # every B zero: nothing to decide from (and nothing that differs)
        for t in "qkv":
            q = f"visual.transformer.resblocks.{i}.attn.{t}_proj."
            student[q + "w_lora_B"] = torch.zeros(WIDTH, RANK)
            student[q + "weight"] = frozen[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"][
                "qkv".index(t) * WIDTH:("qkv".index(t) + 1) * WIDTH]
    assert detect_merge(student, frozen, lora, WIDTH, ALPHA, "file").merged is None
