"""`dgsnet convert-official`: a checkpoint of the published DGS-Net code -> a dgsnet run directory.

The published code (HorizonTEL/DGS-Net) saves `torch.save(model.state_dict())`
of its `CLIPModel`, in OpenAI-CLIP naming:

  clip_model.*                          the student CLIP; in its image tower every LoRA block
                                        has separate attn.{q,k,v}_proj.{weight,bias} (the
                                        slices of OpenAI's packed in_proj), LoRA tensors
                                        attn.{q,k,v}_proj.w_lora_{A,B} and attn.proj (= out_proj)
  clip_model_frozen.clip_model_frozen.* the pretrained CLIP, untouched (packed in_proj)
  clip_model_frozen.img_frozen_fc.*     the stage-1 teacher head
  img_fc.*, text_fc.*                   the student and text heads

and the stage-1 file holds clip_model_frozen.* + img_frozen_fc.*.

The published model's eval() adds scale * B A into the q/k/v weights in place
(train() takes it out again); the final save follows an eval(), so a file may
hold merged weights. This module tells which from the frozen copy, rebuilds
the trained model (base = pretrained weights, LoRA as stored) and writes a run
directory that `dgsnet.models.checkpoint.load_model` reads:

  backbone.json          the open_clip model config inferred from the shapes (QuickGELU)
  backbone.safetensors   the CLIP weights in OpenAI / open_clip naming (packed in_proj), float32
  model.safetensors      LoRA tensors + student/teacher/text heads
  model.json             metadata, with "converted_from" (source, sha256, merged, mismatches)

Nothing here runs code from the file: it is read with torch.load(weights_only=True).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field

import torch

from dgsnet.fileio import read_torch_state_dict

STUDENT = "clip_model."
FROZEN = "clip_model_frozen.clip_model_frozen."
TEACHER2 = "clip_model_frozen.img_frozen_fc."
STAGE1_CLIP = "clip_model_frozen."
STAGE1_HEAD = "img_frozen_fc."
HEAD_PARAMS = ("weight", "bias")
QKV = ("q", "k", "v")
REL_TOL = 1e-5  # "equal" for weights: within this fraction of the weight magnitude (float32 round-off drifts)
PUBLISHED_ALPHA = 6.0
BLOCK = "visual.transformer.resblocks."

STAGE2_LAYOUT = ("the published stage-2 layout (model_epoch_step2.pth): clip_model.* (student CLIP with "
                 "LoRA q/k/v_proj), clip_model_frozen.clip_model_frozen.* (pretrained CLIP), "
                 "clip_model_frozen.img_frozen_fc.*, img_fc.*, text_fc.*")
STAGE1_LAYOUT = ("the published stage-1 layout (model_epoch_step1.pth): clip_model_frozen.* (pretrained "
                 "CLIP) and img_frozen_fc.*")


# ------------------------------------------------------------------------------------ read

def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The flat state dict of a published file ({"state_dict": ...} and "module." prefixes undone)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    state = read_torch_state_dict(path, "the .pth file the published code saved")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}; expected a flat model state dict")
    return state


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _first(keys, n: int = 5) -> str:
    keys = sorted(keys)
    return f"{keys[:n]}{' ... (%d in all)' % len(keys) if len(keys) > n else ''}"


# --------------------------------------------------------------------------------- layout

def detect_layout(state: dict[str, torch.Tensor], source: str) -> str:
    """'stage2' or 'stage1' from the keys; any other file is an error naming what is missing."""
    keys = set(state)
    stage2_marks = [STUDENT + "visual.conv1.weight", FROZEN + "visual.conv1.weight", TEACHER2 + "weight",
                    "img_fc.weight", "text_fc.weight"]
    stage1_marks = [STAGE1_CLIP + "visual.conv1.weight", STAGE1_HEAD + "weight"]
    if all(k in keys for k in stage2_marks):
        return "stage2"
    if all(k in keys for k in stage1_marks) and not any(k.startswith((STUDENT, "img_fc.")) for k in keys):
        return "stage1"
    looks_stage1 = (any(k.startswith(STAGE1_HEAD) for k in keys)
                    and not any(k.startswith((STUDENT, "img_fc.", "text_fc.", FROZEN)) for k in keys))
    marks, layout = (stage1_marks, STAGE1_LAYOUT) if looks_stage1 else (stage2_marks, STAGE2_LAYOUT)
    prefixes = ((STAGE1_CLIP, STAGE1_HEAD) if looks_stage1 else
                (STUDENT, "clip_model_frozen.", "img_fc.", "text_fc."))
    missing = [k for k in marks if k not in keys]
    unexpected = [k for k in keys if not k.startswith(prefixes)]
    raise ValueError(f"{source} is not a published DGS-Net checkpoint: missing keys {_first(missing)}, "
                     f"unexpected keys {_first(unexpected)}; expected {layout}")


# --------------------------------------------------------------------------- architecture

@dataclass
class Architecture:
    """What open_clip's build_model_from_openai_state_dict reads off an OpenAI CLIP state dict."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_mlp_ratio: float
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp_ratio: float

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64

    def model_config(self) -> dict:
        """An open_clip model config ({"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"})."""
        return {
            "embed_dim": self.embed_dim,
            "quick_gelu": True,  # OpenAI CLIP was trained with QuickGELU
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers,
                           "width": self.vision_width, "head_width": 64, "patch_size": self.patch_size,
                           "mlp_ratio": self.vision_mlp_ratio},
            "text_cfg": {"context_length": self.context_length, "vocab_size": self.vocab_size,
                         "width": self.text_width, "heads": self.text_heads, "layers": self.text_layers,
                         "mlp_ratio": self.text_mlp_ratio},
        }

    def describe(self) -> str:
        return (f"ViT width {self.vision_width}, {self.vision_layers} blocks, {self.vision_heads} heads, "
                f"patch {self.patch_size}, {self.image_size} px; text width {self.text_width}, "
                f"{self.text_layers} blocks, {self.text_heads} heads, context {self.context_length}, "
                f"vocab {self.vocab_size}; embed {self.embed_dim}; QuickGELU")


def _block_indices(keys, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def infer_architecture(clip: dict[str, torch.Tensor], where: str) -> Architecture:
    """The CLIP size from its tensor shapes (`where` names the key prefix in errors)."""
    required = ["visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
                "positional_embedding", "token_embedding.weight", "ln_final.weight"]
    missing = [where + k for k in required if k not in clip]
    if missing:
        hint = (" (a ResNet CLIP: only ViT backbones are supported)"
                if any(k.startswith("visual.layer1.") for k in clip) else "")
        raise ValueError(f"cannot infer the CLIP architecture: missing keys {_first(missing)}{hint}")
    conv = clip["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    rows = clip["visual.positional_embedding"].shape[0]
    grid = round((rows - 1) ** 0.5)
    if grid * grid + 1 != rows:
        raise ValueError(f"{where}visual.positional_embedding has {rows} rows, not 1 + a square grid")
    vblocks = _block_indices(clip, BLOCK)
    tblocks = _block_indices(clip, "transformer.resblocks.")
    for name, blocks in (("visual.transformer", vblocks), ("transformer", tblocks)):
        if not blocks or blocks != list(range(len(blocks))):
            raise ValueError(f"{where}{name}.resblocks: block indices {blocks} are not 0..n-1")
    text_width = clip["ln_final.weight"].shape[0]
    if width < 64 or text_width < 64:
        raise ValueError(f"widths {width} (image) / {text_width} (text) < 64: OpenAI CLIP has width // 64 "
                         "attention heads, so this cannot be an OpenAI-layout CLIP")

    def mlp_ratio(prefix: str, dim: int) -> float:
        key = prefix + "0.mlp.c_fc.weight"
        if key not in clip:
            raise ValueError(f"cannot infer the MLP width: {where}{key} is missing")
        ratio = clip[key].shape[0] / dim
        return int(ratio) if ratio == int(ratio) else ratio

    return Architecture(
        embed_dim=clip["text_projection"].shape[1], image_size=patch * grid, patch_size=patch,
        vision_width=width, vision_layers=len(vblocks), vision_mlp_ratio=mlp_ratio(BLOCK, width),
        context_length=clip["positional_embedding"].shape[0], vocab_size=clip["token_embedding.weight"].shape[0],
        text_width=text_width, text_heads=text_width // 64, text_layers=len(tblocks),
        text_mlp_ratio=mlp_ratio("transformer.resblocks.", text_width))


def expected_clip_shapes(arch: Architecture) -> dict[str, tuple]:
    """Key -> shape of the open_clip CLIP of `arch` (built on the meta device: no memory, no init cost)."""
    from open_clip.model import CLIP

    with torch.device("meta"):
        model = CLIP(**arch.model_config())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(got: dict[str, torch.Tensor], want: dict[str, tuple], source: str, layout: str) -> None:
    missing, unexpected = set(want) - set(got), set(got) - set(want)
    wrong = [f"{k} {tuple(got[k].shape)} != {want[k]}" for k in sorted(set(want) & set(got))
             if tuple(got[k].shape) != want[k]]
    if missing or unexpected or wrong:
        hint = ""
        if any(re.search(r"attn\.proj\.w_lora_[AB]$", k) for k in unexpected):
            hint = (" LoRA on the attention output projection ('o' in the published --params) is not "
                    "supported: dgsnet puts LoRA on q, k and v only.")
        elif any(k.startswith(STUDENT + "transformer.") and "_proj." in k for k in unexpected):
            hint = " LoRA in the text tower (published --encoder text/both) is not supported."
        raise ValueError(f"{source} does not have {layout}: missing keys {_first(missing)}, unexpected keys "
                         f"{_first(unexpected)}, wrong shapes {wrong[:5]}.{hint}")


# ------------------------------------------------------------------------------------- LoRA

@dataclass
class LoRALayout:
    rank: int
    targets: tuple[str, ...]
    blocks: list[int]  # image blocks with LoRA
    split_blocks: list[int]  # image blocks whose attention the published code replaced (q/k/v_proj keys)

    def config_blocks(self, layers: int) -> list[int] | str:
        return "all" if self.blocks == list(range(layers)) else list(self.blocks)


def lora_layout(student: dict[str, torch.Tensor], arch: Architecture, source: str) -> LoRALayout:
    """Rank, targets and blocks of the student's LoRA, read from its keys and A's shape."""
    split = _block_indices([k for k in student if re.search(r"\.attn\.[qkv]_proj\.weight$", k)], BLOCK)
    per_block: dict[int, tuple[str, ...]] = {}
    ranks = set()
    for i in split:
        targets = tuple(t for t in QKV if f"{BLOCK}{i}.attn.{t}_proj.w_lora_A" in student)
        if targets:
            per_block[i] = targets
            ranks.update(student[f"{BLOCK}{i}.attn.{t}_proj.w_lora_A"].shape[0] for t in targets)
    if not per_block:
        raise ValueError(f"{source}: no LoRA tensors (clip_model.{BLOCK}N.attn.q_proj.w_lora_A ...) in the "
                         f"student; expected {STAGE2_LAYOUT}")
    if len(set(per_block.values())) > 1:
        raise ValueError(f"{source}: LoRA targets differ between blocks ({per_block}); dgsnet needs one "
                         "set of q/k/v targets for all LoRA blocks")
    if len(ranks) != 1:
        raise ValueError(f"{source}: LoRA ranks differ between layers ({sorted(ranks)})")
    return LoRALayout(rank=ranks.pop(), targets=next(iter(per_block.values())), blocks=sorted(per_block),
                      split_blocks=split)


def expected_student_shapes(clip_shapes: dict[str, tuple], arch: Architecture,
                            lora: LoRALayout) -> dict[str, tuple]:
    """The published student's keys: the CLIP's, with the split attention of the LoRA blocks."""
    d, r = arch.vision_width, lora.rank
    shapes = dict(clip_shapes)
    for i in lora.split_blocks:
        p = f"{BLOCK}{i}.attn."
        for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            shapes.pop(p + k)
        for t in QKV:
            shapes[f"{p}{t}_proj.weight"], shapes[f"{p}{t}_proj.bias"] = (d, d), (d,)
        shapes[p + "proj.weight"], shapes[p + "proj.bias"] = (d, d), (d,)
        if i in lora.blocks:
            for t in lora.targets:
                shapes[f"{p}{t}_proj.w_lora_A"], shapes[f"{p}{t}_proj.w_lora_B"] = (r, d), (d, r)
    return shapes


def frozen_counterpart(student_key: str, frozen: dict[str, torch.Tensor], width: int) -> tuple[str, torch.Tensor]:
    """(name, tensor) of the frozen copy that a student tensor must equal (q/k/v: the packed slice)."""
    m = re.match(r"(visual\.transformer\.resblocks\.\d+\.attn\.)(q|k|v)_proj\.(weight|bias)$", student_key)
    if m:
        prefix, t, kind = m.groups()
        i = QKV.index(t)
        name = f"{prefix}in_proj_{kind}"
        return f"{name}[{i * width}:{(i + 1) * width}]", frozen[name][i * width:(i + 1) * width]
    m = re.match(r"(visual\.transformer\.resblocks\.\d+\.attn\.)proj\.(weight|bias)$", student_key)
    if m:
        name = f"{m.group(1)}out_proj.{m.group(2)}"
        return name, frozen[name]
    return student_key, frozen[student_key]


def tolerance(*tensors: torch.Tensor) -> float:
    """What counts as equal for weights of this magnitude (float round-off of repeated merge/unmerge)."""
    rel = max(REL_TOL, 16 * max(torch.finfo(t.dtype).eps if t.is_floating_point() else 0.0 for t in tensors))
    return rel * max((float(t.detach().double().abs().max()) if t.numel() else 0.0) for t in tensors)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# --------------------------------------------------------------------------------- merge

@dataclass
class MergeReport:
    merged: bool | None  # None: no layer could tell (every LoRA update below the tolerance)
    decided: int  # LoRA layers whose weights told merged or not
    undecidable: list[str] = field(default_factory=list)

    def describe(self) -> str:
        total = self.decided + len(self.undecidable)
        if self.merged is None:
            return (f"undecidable (no LoRA layer has an update above the tolerance; merged or not gives "
                    f"the same model), {total} layers")
        state = "merged (scale * B A already added to the q/k/v weights)" if self.merged else "unmerged"
        return f"{state}, decided from {self.decided} of {total} LoRA layers"


def detect_merge(student: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor], lora: LoRALayout,
                 width: int, alpha: float, source: str) -> MergeReport:
    """Whether the student's q/k/v weights are W0 (unmerged) or W0 + scale B A (merged).

    A layer whose update is below the tolerance (B = 0) cannot tell; the others must agree. A layer
    that fits neither reading is an error: a wrong alpha (the fitted scale names the alpha that
    would fit), q/k/v in another order, or a file whose frozen copy is not its base."""
    scale = alpha / math.sqrt(lora.rank)
    verdicts: dict[str, list[str]] = {"merged": [], "unmerged": [], "undecidable": [], "neither": []}
    fitted_alphas, notes = [], []
    for i in lora.blocks:
        p = f"{BLOCK}{i}.attn."
        for t in lora.targets:
            name = f"clip_model.{p}{t}_proj.weight"
            w = student[f"{p}{t}_proj.weight"].double()
            _, w0 = frozen_counterpart(f"{p}{t}_proj.weight", frozen, width)
            w0 = w0.double()
            ba = student[f"{p}{t}_proj.w_lora_B"].double() @ student[f"{p}{t}_proj.w_lora_A"].double()
            tol = tolerance(student[f"{p}{t}_proj.weight"], frozen[f"{p}in_proj_weight"])
            diff = w - w0
            fits_unmerged = float(diff.abs().max()) <= tol
            fits_merged = float((diff - scale * ba).abs().max()) <= tol
            if fits_unmerged and fits_merged:
                verdicts["undecidable"].append(name)
            elif fits_unmerged or fits_merged:
                verdicts["merged" if fits_merged else "unmerged"].append(name)
            else:
                verdicts["neither"].append(name)
                norm = float((ba * ba).sum())
                if norm > 0:
                    s = float((diff * ba).sum()) / norm
                    if float((diff - s * ba).abs().max()) <= tol:
                        fitted_alphas.append(s * math.sqrt(lora.rank))
                for j, other in enumerate(QKV):
                    if other != t:
                        o = frozen[f"{p}in_proj_weight"][j * width:(j + 1) * width].double()
                        if min(_maxdiff(w, o), _maxdiff(w, o + scale * ba)) <= tol:
                            notes.append(f"{name} equals the frozen copy's {other} slice (+ its LoRA update "
                                         f"or not): q/k/v are swapped relative to the packed in_proj "
                                         f"(rows 0:D q, D:2D k, 2D:3D v)")
    if verdicts["neither"]:
        why = ""
        if len(fitted_alphas) == len(verdicts["neither"]):
            lo, hi = min(fitted_alphas), max(fitted_alphas)
            if hi - lo <= 1e-3 * max(abs(hi), 1e-12):
                fit = (lo + hi) / 2
                why = (f" The differences are scale * B A with scale {fit / math.sqrt(lora.rank):.6g}: the "
                       f"file fits --lora-alpha {fit:.6g} (r = {lora.rank}), not {alpha:g}.")
        if notes:
            why += " " + notes[0] + ("" if len(notes) == 1 else f" (and {len(notes) - 1} more)") + "."
        if not why:
            why = (f" Neither a wrong alpha nor a q/k/v swap explains it: is --lora-alpha ({alpha:g}) right, and "
                   f"is the frozen copy the base of this student?")
        raise ValueError(
            f"{source}: the student's q/k/v weights of {len(verdicts['neither'])} LoRA layers (first: "
            f"{verdicts['neither'][0]}) are neither the frozen copy's weights (unmerged) nor those plus "
            f"alpha/sqrt(r) * B A with alpha {alpha:g} (merged).{why}")
    if verdicts["merged"] and verdicts["unmerged"]:
        raise ValueError(f"{source}: some LoRA layers are merged ({_first(verdicts['merged'], 3)}) and some are "
                         f"not ({_first(verdicts['unmerged'], 3)}); the file is inconsistent")
    decided = len(verdicts["merged"]) + len(verdicts["unmerged"])
    merged = None if decided == 0 else bool(verdicts["merged"])
    return MergeReport(merged=merged, decided=decided, undecidable=verdicts["undecidable"])


# -------------------------------------------------------------------------------- verify

def verify_frozen(student: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor], lora: LoRALayout,
                  width: int) -> list[dict]:
    """Student tensors that should equal the frozen copy but do not: [{name, frozen, max_abs_diff}]."""
    mismatches = []
    for key in sorted(student):
        if key.endswith(("w_lora_A", "w_lora_B")):
            continue
        m = re.match(r"visual\.transformer\.resblocks\.(\d+)\.attn\.(q|k|v)_proj\.weight$", key)
        if m and int(m.group(1)) in lora.blocks and m.group(2) in lora.targets:
            continue  # LoRA weights: checked by detect_merge (W0, or W0 + scale B A)
        ref_name, ref = frozen_counterpart(key, frozen, width)
        got = student[key]
        diff = _maxdiff(got, ref) if got.shape == ref.shape else float("inf")
        if not diff <= tolerance(got, ref):
            mismatches.append({"name": STUDENT + key, "frozen": FROZEN + ref_name, "max_abs_diff": diff})
    return mismatches


def compare_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], a_name: str, b_name: str) -> list[dict]:
    """Differences between two state dicts of the same layout, by name."""
    out = [{"name": k, "problem": f"only in {a_name}"} for k in sorted(set(a) - set(b))]
    out += [{"name": k, "problem": f"only in {b_name}"} for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            out.append({"name": k, "problem": f"shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"})
        else:
            diff = _maxdiff(a[k], b[k])
            if not diff <= tolerance(a[k], b[k]):
                out.append({"name": k, "problem": "values differ", "max_abs_diff": diff})
    return out


# --------------------------------------------------------------------------------- repack

def packed_clip(student: dict[str, torch.Tensor], lora: LoRALayout) -> dict[str, torch.Tensor]:
    """The student CLIP in OpenAI naming: q/k/v_proj concatenated back into in_proj, proj -> out_proj."""
    out = {k: v for k, v in student.items()
           if not re.search(r"\.attn\.((q|k|v)_proj\.(weight|bias|w_lora_[AB])|proj\.(weight|bias))$", k)}
    for i in lora.split_blocks:
        p = f"{BLOCK}{i}.attn."
        out[p + "in_proj_weight"] = torch.cat([student[f"{p}{t}_proj.weight"] for t in QKV], dim=0)
        out[p + "in_proj_bias"] = torch.cat([student[f"{p}{t}_proj.bias"] for t in QKV], dim=0)
        out[p + "out_proj.weight"], out[p + "out_proj.bias"] = student[p + "proj.weight"], student[p + "proj.bias"]
    return out


def lora_tensors(student: dict[str, torch.Tensor], lora: LoRALayout) -> dict[str, torch.Tensor]:
    """The LoRA tensors in dgsnet's trained_state_dict naming (visual...attn.{q,k,v}_{A,B})."""
    out = {}
    for i in lora.blocks:
        p = f"{BLOCK}{i}.attn."
        for t in lora.targets:
            out[f"{p}{t}_A"] = student[f"{p}{t}_proj.w_lora_A"]
            out[f"{p}{t}_B"] = student[f"{p}{t}_proj.w_lora_B"]
    return out


def _head(state: dict[str, torch.Tensor], prefix: str, dim: int, source: str) -> dict[str, torch.Tensor]:
    head = {p: state[prefix + p] for p in HEAD_PARAMS}
    if tuple(head["weight"].shape) != (1, dim) or tuple(head["bias"].shape) != (1,):
        raise ValueError(f"{source}: {prefix}weight is {tuple(head['weight'].shape)}, expected (1, {dim}): "
                         "dgsnet heads give one logit (the published num_classes=1)")
    return head


# ---------------------------------------------------------------------------------- write

def published_config(lora_cfg: dict, stage: int, source: str) -> dict:
    """The training config recorded for a converted run: what the published code trains with."""
    return {
        "converted_from": os.path.basename(source), "source_code": "HorizonTEL/DGS-Net",
        "norm": "imagenet", "model": "backbone.json", "pretrained": "backbone.safetensors",
        "activation": "quick_gelu", "init_seed": 0,
        "lora_rank": lora_cfg["rank"], "lora_alpha": lora_cfg["alpha"], "lora_scaling": lora_cfg["scaling"],
        "lora_dropout": lora_cfg["dropout"], "lora_dropout_masks": lora_cfg["dropout_masks"],
        "lora_targets": list(lora_cfg["targets"]),
        "lora_blocks": lora_cfg["blocks"] if lora_cfg["blocks"] == "all" else
        ",".join(str(b) for b in lora_cfg["blocks"]),
        "batch_size": 32, "lr": 1e-4, "betas": [0.9, 0.999], "variant": "published", "stage": stage,
    }


def _prepare_out(out: str) -> tuple[str, str]:
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"--out {out} exists and is not an empty directory; choose a new run directory")
    tmp = out + ".tmp"
    if os.path.exists(tmp):
        raise FileExistsError(f"{tmp} exists (left by an interrupted conversion?); remove it and run again")
    return out, tmp


def write_run(out: str, clip_state: dict[str, torch.Tensor], arch: Architecture, lora_cfg, stage: int,
              trained: dict[str, torch.Tensor], converted_from: dict, source: str) -> None:
    """backbone.json + backbone.safetensors + model.safetensors + model.json, into out.tmp, renamed at the end."""
    from safetensors.torch import save

    from dgsnet.fileio import atomic_write
    from dgsnet.models import BackboneSpec, DGSNetModel
    from dgsnet.models.checkpoint import META_FILE, load_model, write_model

    out, tmp = _prepare_out(out)
    os.makedirs(tmp)
    try:
        atomic_write(os.path.join(tmp, "backbone.json"), json.dumps(arch.model_config(), indent=2))
        weights = {k: v.detach().to(torch.float32).contiguous() for k, v in clip_state.items()}
        atomic_write(os.path.join(tmp, "backbone.safetensors"), save(weights))
        del weights
        spec = BackboneSpec(model=os.path.join(tmp, "backbone.json"),
                            pretrained=os.path.join(tmp, "backbone.safetensors"), activation="quick_gelu")
        model = DGSNetModel(spec, lora_cfg)
        model.load_trained_state_dict(trained, only=tuple({k.split(".")[0] + "." for k in trained}), source=source)
        config = published_config(lora_cfg.to_dict(), stage, source)
        write_model(tmp, model, stage=stage, config=config, step=0)
        del model
        meta_path = os.path.join(tmp, META_FILE)
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
        meta["backbone"]["model"], meta["backbone"]["pretrained"] = "backbone.json", "backbone.safetensors"
        meta["converted_from"] = converted_from
        atomic_write(meta_path, json.dumps(meta, indent=2))
        load_model(tmp)  # the run directory loads (strictly) as `dgsnet eval/export/predict` will load it
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -------------------------------------------------------------------------------- convert

@dataclass
class ConversionReport:
    source: str
    out: str
    stage: int
    architecture: str
    lora: dict | None = None
    merged: bool | None = None
    merge: str = ""
    as_published_test: bool = False
    mismatches: list = field(default_factory=list)
    stage1_mismatches: list | None = None  # None: no --stage1 file given
    warnings: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"converted {self.source} -> {self.out} (stage {self.stage})",
                 f"  architecture: {self.architecture}"]
        if self.lora:
            lines.append(f"  LoRA: rank {self.lora['rank']}, alpha {self.lora['alpha']:g} (scale alpha/sqrt(r) = "
                         f"{self.lora['alpha'] / math.sqrt(self.lora['rank']):.4g}), targets "
                         f"{','.join(self.lora['targets'])}, blocks {self.lora['blocks']}")
            lines.append(f"  file: {self.merge}")
            lines.append("  base weights: " + ("the stored student weights (--as-published-test: what the "
                                               "published test.py computes)" if self.as_published_test
                                               else "the frozen pretrained copy (the trained model)"))
        lines.append(f"  frozen-tensor mismatches: {len(self.mismatches) or 'none'}"
                     + (f" ({', '.join(m['name'] for m in self.mismatches[:5])}"
                        f"{', ...' if len(self.mismatches) > 5 else ''})" if self.mismatches else ""))
        if self.stage1_mismatches is not None:
            lines.append(f"  --stage1 differences: {len(self.stage1_mismatches) or 'none'}")
        return "\n".join(lines)


def _stage1_parts(state, source):
    clip = with_prefix(state, STAGE1_CLIP)
    arch = infer_architecture(clip, STAGE1_CLIP)
    shapes = expected_clip_shapes(arch)
    want = {STAGE1_CLIP + k: s for k, s in shapes.items()}
    want.update({STAGE1_HEAD + "weight": (1, arch.embed_dim), STAGE1_HEAD + "bias": (1,)})
    check_keys(state, want, source, STAGE1_LAYOUT)
    return clip, arch, _head(state, STAGE1_HEAD, arch.embed_dim, source)


def convert_stage1(path: str, out: str) -> ConversionReport:
    """A stage-1 file alone -> a stage-1 run (frozen CLIP + teacher probe; only teacher_head is trained)."""
    from dgsnet.models import LoRAConfig

    state = read_checkpoint(path)
    if detect_layout(state, path) != "stage1":
        raise ValueError(f"{path} is not a stage-1 file; convert_official() converts stage-2 files")
    clip, arch, head = _stage1_parts(state, path)
    _prepare_out(out)
    lora_cfg = LoRAConfig()  # published settings; stage-1 runs leave LoRA at its (B = 0) start
    converted = {"source": os.path.basename(path), "sha256": sha256_of(path), "layout": "stage1",
                 "merged": None, "as_published_test": False, "mismatches": []}
    write_run(out, clip, arch, lora_cfg, 1, {f"teacher_head.{k}": v for k, v in head.items()}, converted, path)
    return ConversionReport(source=path, out=os.path.abspath(out), stage=1, architecture=arch.describe())


def convert_official(path: str, out: str, stage1: str | None = None, lora_alpha: float = PUBLISHED_ALPHA,
                     as_published_test: bool = False) -> ConversionReport:
    """A published checkpoint -> a dgsnet run directory at `out`; see the module docstring."""
    from dgsnet.models import LoRAConfig

    _prepare_out(out)  # before the (large) checkpoint is read: a taken --out fails in a second, not minutes
    state = read_checkpoint(path)
    layout = detect_layout(state, path)
    if layout == "stage1":
        if stage1 or as_published_test:
            raise ValueError(f"{path} is a stage-1 file (teacher probe): --stage1 and --as-published-test "
                             "apply to a stage-2 file")
        return convert_stage1(path, out)
    if not lora_alpha > 0:
        raise ValueError(f"--lora-alpha {lora_alpha}: must be > 0")

    student, frozen = with_prefix(state, STUDENT), with_prefix(state, FROZEN)
    arch = infer_architecture(frozen, FROZEN)
    clip_shapes = expected_clip_shapes(arch)
    lora = lora_layout(student, arch, path)
    want = {FROZEN + k: s for k, s in clip_shapes.items()}
    want.update({STUDENT + k: s for k, s in expected_student_shapes(clip_shapes, arch, lora).items()})
    for prefix in (TEACHER2, "img_fc.", "text_fc."):
        want.update({prefix + "weight": (1, arch.embed_dim), prefix + "bias": (1,)})
    check_keys(state, want, path, STAGE2_LAYOUT)
    _prepare_out(out)

    merge = detect_merge(student, frozen, lora, arch.vision_width, lora_alpha, path)
    mismatches = verify_frozen(student, frozen, lora, arch.vision_width)
    report_warnings = []
    if mismatches:
        report_warnings.append(
            f"{len(mismatches)} student tensors that the published code keeps frozen differ from the frozen "
            f"copy ({', '.join(m['name'] for m in mismatches[:10])}{', ...' if len(mismatches) > 10 else ''}); "
            + ("--as-published-test uses the student's tensors" if as_published_test
               else "the frozen copy's are used"))
    if merge.merged is not True:
        report_warnings.append(f"the file's q/k/v weights do not include the LoRA update, so they do not show "
                               f"alpha: the run assumes --lora-alpha {lora_alpha:g} (published: 6) unchecked")

    stage1_mismatches: list[dict] | None = None
    stage1_record = None
    teacher = _head(state, TEACHER2, arch.embed_dim, path)
    if stage1:
        s1 = read_checkpoint(stage1)
        if detect_layout(s1, stage1) != "stage1":
            raise ValueError(f"--stage1 {stage1} is not a stage-1 file; expected {STAGE1_LAYOUT}")
        s1_clip, _, s1_head = _stage1_parts(s1, stage1)
        stage1_mismatches = [{**m, "name": STAGE1_CLIP + m["name"]}  # named as in the stage-1 file
                             for m in compare_states(frozen, s1_clip, "the stage-2 frozen copy", "the stage-1 file")]
        stage1_mismatches += [{**m, "name": "img_frozen_fc." + m["name"]}
                              for m in compare_states(teacher, s1_head, "the stage-2 teacher head",
                                                      "the stage-1 file")]
        stage1_record = {"source": os.path.basename(stage1), "sha256": sha256_of(stage1),
                         "mismatches": stage1_mismatches}
        if stage1_mismatches:
            report_warnings.append(
                f"--stage1 {stage1} differs from the stage-2 file's frozen copy / teacher head in "
                f"{len(stage1_mismatches)} tensors ({', '.join(m['name'] for m in stage1_mismatches[:10])}); "
                "the stage-2 file's are used")

    base = packed_clip(student, lora) if as_published_test else frozen
    lora_cfg = LoRAConfig(rank=lora.rank, alpha=float(lora_alpha), dropout=0.8, targets=lora.targets,
                          blocks=lora.config_blocks(arch.vision_layers), scaling="sqrt", dropout_masks="separate")
    trained = dict(lora_tensors(student, lora))  # keys already visual.transformer.resblocks.N.attn.*
    for name, prefix, src in (("student_head", "img_fc.", state), ("text_head", "text_fc.", state)):
        trained.update({f"{name}.{k}": v for k, v in _head(src, prefix, arch.embed_dim, path).items()})
    trained.update({f"teacher_head.{k}": v for k, v in teacher.items()})
    converted = {"source": os.path.basename(path), "sha256": sha256_of(path), "layout": "stage2",
                 "merged": merge.merged, "merge": merge.describe(), "undecidable_layers": merge.undecidable,
                 "as_published_test": as_published_test,
                 "base": "student weights as stored" if as_published_test else "frozen copy (pretrained)",
                 "lora_alpha": float(lora_alpha), "alpha_checked": merge.merged is True,
                 "mismatches": mismatches}
    if stage1_record:
        converted["stage1"] = stage1_record
    write_run(out, base, arch, lora_cfg, 2, trained, converted, path)
    return ConversionReport(
        source=path, out=os.path.abspath(out), stage=2, architecture=arch.describe(), lora=lora_cfg.to_dict(),
        merged=merge.merged, merge=merge.describe(), as_published_test=as_published_test,
        mismatches=mismatches, stage1_mismatches=stage1_mismatches, warnings=report_warnings)


# ------------------------------------------------------------------------------------ CLI

def _cmd_convert(args) -> int:
    report = convert_official(args.ckpt, args.out, stage1=args.stage1, lora_alpha=args.lora_alpha,
                              as_published_test=args.as_published_test)
    for note in report.warnings:
        print(f"dgsnet convert-official: warning: {note}", file=sys.stderr)
    print(report.summary())
    return 0


def add_convert_parser(sub) -> None:
    """Registers `dgsnet convert-official` on an argparse subparsers object."""
    text = ("convert a checkpoint of the published DGS-Net code (HorizonTEL/DGS-Net model_epoch_step2.pth, "
            "or a stage-1 model_epoch_step1.pth alone) into a dgsnet run directory for eval/export/predict")
    p = sub.add_parser(
        "convert-official", help=text,
        description=text + ". The architecture is read off the tensor shapes; whether the file's q/k/v "
                    "weights already include the LoRA update (the published eval() merges it in place) is "
                    "told from the frozen copy. By default the run is the trained model (pretrained weights "
                    "+ LoRA); --as-published-test instead reproduces what the published test.py computes "
                    "(it adds the LoRA update once more, so a merged file gets it twice).")
    p.add_argument("ckpt", help="the published .pth file (read with torch.load(weights_only=True))")
    p.add_argument("--out", required=True, help="new run directory (must not exist or be empty)")
    p.add_argument("--stage1", default=None,
                   help="the published stage-1 file (model_epoch_step1.pth): checked against the stage-2 "
                        "file's frozen CLIP and teacher head, differences reported")
    p.add_argument("--lora-alpha", type=float, default=PUBLISHED_ALPHA,
                   help="LoRA alpha of the run (not stored in the file; scale = alpha / sqrt(r)); default 6")
    p.add_argument("--as-published-test", action="store_true",
                   help="reproduce the published test.py exactly: base = the stored student weights, LoRA "
                        "added on top (for a merged file the update counts twice); default: the trained model")
    p.set_defaults(func=_cmd_convert)


__all__ = ["Architecture", "ConversionReport", "add_convert_parser", "convert_official", "detect_layout",
           "detect_merge", "infer_architecture", "read_checkpoint", "verify_frozen"]
