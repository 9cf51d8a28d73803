"""A small model in the published DGS-Net layout, and the files it saves, for the converter's tests.

The image path of the reference model below is this test's own code (published
naming: separate q/k/v projections with LoRA A/B and scale alpha / sqrt(r), out
projection `proj`, QuickGELU MLPs), independent of dgsnet's modules; only the
text tower's keys and weights come from open_clip. Converted runs must give the
reference logits through `load_model(run).detector()`.
"""
import math
from collections import OrderedDict

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


# ------------------------------------------------------------- converting and scoring

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
