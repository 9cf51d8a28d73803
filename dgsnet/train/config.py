"""Run configuration: defaults < YAML file < command-line flags, saved resolved beside the run."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields

import yaml

if typing.TYPE_CHECKING:  # imported where used: `dgsnet train --help` must not need torch
    from dgsnet.models import BackboneSpec, LoRAConfig


#: `--preset published`: every knob at the behaviour of the published DGS-Net code
#: (HorizonTEL/DGS-Net). Keys dgsnet's own defaults set differently are marked; the README
#: explains each. Values given in a --config file or as flags still win over the preset.
PRESETS: dict[str, dict] = {
    "published": {
        "model": "ViT-L-14", "pretrained": "openai",
        "activation": "quick_gelu",  # OpenAI CLIP's blocks
        "lora_rank": 6, "lora_alpha": 6.0, "lora_scaling": "sqrt", "lora_dropout": 0.8,
        "lora_dropout_masks": "separate", "lora_targets": ["q", "k", "v"], "lora_blocks": "all",
        "norm": "imagenet", "flip_prob": 0.5, "blur_prob": 0.0, "jpeg_prob": 0.0, "resize_prob": 0.0,
        "decode": "pil",  # differs: Image.open(path).convert("RGB"), no EXIF rotation
        "drop_last": False,  # differs: torch's DataLoader default keeps the last partial batch
        "amp": "off",  # differs: float32, no autocast
        "batch_size": 32, "accum": 1, "lr": 1e-4, "teacher_lr": 1e-4, "betas": [0.9, 0.999],
        "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0,
        "teacher_epochs": 3, "epochs": 1,  # the README's stage commands: --niter 3, then --niter 1
        "surgery": "feature", "variant": "published", "lam": 0.2, "eps": 1e-6,
        "seed": 100,  # seed_torch(100); the random streams differ, so runs are not bit-identical
    },
}


#: --best-metric choices; loss is minimised, the others maximised.
BEST_METRICS = ("acc", "ap", "auc", "loss")
#: --report-to targets -> the package each needs.
REPORT_TARGETS = {"tensorboard": "tensorboard", "wandb": "wandb"}


@dataclass
class TrainConfig:
    # preset (applied first: a config file and flags override it)
    preset: str | None = None  # published: every knob as in the published DGS-Net code (see README)
    # data
    data: str | None = None  # dataset root ({0_real,1_fake} or <class>/{0_real,1_fake})
    captions: str | None = None  # JSON path -> caption; default <data>/captions.json when present
    norm: str = "imagenet"  # input normalisation: imagenet (published) or clip
    flip_prob: float = 0.5  # probability of a horizontal flip of the tiled patches
    blur_prob: float = 0.0  # probability of a Gaussian blur before patch selection
    jpeg_prob: float = 0.0  # probability of JPEG re-compression before patch selection
    resize_prob: float = 0.0  # probability of a random resize before patch selection
    workers: int = 2  # DataLoader worker processes
    strict_data: bool = False  # a bad image is an error instead of being skipped
    pixel_budget: float | None = None  # megapixels decoded at once by all DataLoader workers (default: 25% of memory at 12 bytes/pixel); DGSNET_PIXEL_BUDGET also sets it
    jpeg_draft: bool = False  # decode a JPEG over the 100 MP bomb limit at 1/2..1/8 scale (it is resampled) instead of skipping it
    decode: str = "dgsnet"  # dgsnet (EXIF rotation applied, alpha on white) or pil (published: PIL convert('RGB'))
    jpeg_decoder: str = "cpu"  # cpu (Pillow in the DataLoader workers) or device (JPEG files decoded on the training device by torchvision: nvjpeg on a GPU, pixels a few levels off libjpeg's; needs --patch-selection device and no blur/jpeg/resize augmentation)
    patch_selection: str = "auto"  # where patches are selected: cpu (DataLoader workers), device (the training device, one batch at a time: the same tiles), auto (device on a GPU, else cpu)
    caption_max_template: float = 0.1  # error when a captions file is used and more than this fraction of images fall back to the template caption
    drop_last: bool = True  # drop an epoch's last partial batch (the published loader keeps it)
    # backbone and LoRA (published: ViT-L/14 OpenAI weights, r=6, alpha=6, dropout 0.8, q/k/v of all blocks)
    model: str = "ViT-L-14"  # open_clip model name (dgsnet adds dgs-tiny and dgs-small for tests/demo)
    pretrained: str | None = "openai"  # open_clip tag, local weights file, or none (random init)
    activation: str = "auto"  # auto (QuickGELU for OpenAI weights), quick_gelu or gelu
    init_seed: int = 0  # seed of random-initialised weights (backbone and heads)
    lora_rank: int = 6  # LoRA rank r
    lora_alpha: float = 6.0  # LoRA alpha (the update is scaled by alpha / sqrt(r), or alpha / r)
    lora_scaling: str = "sqrt"  # sqrt (alpha / sqrt(r), published CLIP-LoRA) or linear (alpha / r)
    lora_dropout: float = 0.8  # dropout on the LoRA input (CPU: the mask drawn as uniforms >= p, nn.Dropout's distribution, another random stream)
    lora_dropout_masks: str = "separate"  # separate (one mask per q, k, v, published) or shared
    lora_targets: list[str] = field(default_factory=lambda: ["q", "k", "v"])  # attention projections with LoRA
    lora_blocks: str = "all"  # "all" or comma-separated indices, e.g. "-4,-3,-2,-1"
    # optimisation (published: Adam, lr 1e-4, betas (0.9, 0.999), batch 32, 3 + 1 epochs)
    batch_size: int = 32  # images per step per process
    accum: int = 1  # gradient accumulation steps per optimiser step
    lr: float = 1e-4  # Adam learning rate of stage 2
    teacher_lr: float = 1e-4  # Adam learning rate of stage 1 (the teacher probe)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    weight_decay: float = 0.0  # Adam weight decay
    schedule: str = "constant"  # constant or cosine
    warmup_steps: int = 0
    teacher_epochs: int = 3  # stage-1 epochs
    epochs: int = 1  # stage-2 epochs
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs)
    # DGS-Net objective
    surgery: str = "feature"  # none (plain LoRA), feature (DGS-Net as published), layer or both (dgsnet's extension: parameter-space surgery, not in the paper or the published code)
    variant: str = "published"  # published or paper
    lam: float = 0.2  # weight of the prior-alignment loss
    eps: float = 1e-6  # added to ||relu(g_X)|| when normalising the harmful direction
    backend: str = "auto"  # reference, cpp, cuda, triton, auto
    layer_refresh: int = 1  # layer surgery: recompute the parameter-space directions every k steps
    layer_eps: float = 1e-12  # layer surgery: added to ||u_l||^2 in the projection
    # runtime
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: str = "auto"  # auto (bf16 on GPU, off on CPU), bf16, fp16, off
    compile: bool = False  # torch.compile the image encoder
    fsdp: bool = False  # stage 2 under torchrun: shard the image encoder (FSDP2); surgery none/feature
    seed: int = 0  # seed of data order, augmentation and dropout
    # outputs
    out: str = "runs/dgsnet"  # run directory: checkpoints, logs, resolved config
    teacher: str | None = None  # stage-1 run directory (for stage 2)
    log_every: int = 10  # optimiser steps between log records (the loss is read from the device only then)
    ckpt_every: int = 100  # optimiser steps between resumable checkpoints
    report_to: list[str] = field(default_factory=list)  # also log to: tensorboard, wandb (comma or space separated; none by default)
    wandb_project: str | None = None  # W&B project for --report-to wandb (default: $WANDB_PROJECT, else dgsnet)
    # validation and the best checkpoint (<out>/best/)
    val_data: str | None = None  # validation set root (same layouts as --data), scored without augmentation
    val_every: int | None = None  # optimiser steps between validations (0 or unset: at each epoch's end)
    best_metric: str | None = None  # acc, ap, auc or loss (minimised): which validation picks <out>/best/ (ap when unset; needs --val-data)
    early_stop: int | None = None  # stop after this many validations without improvement (needs --val-data)
    caption_cache: str | None = None  # safetensors file reused across runs; default <out>/caption_cache.safetensors

    def __post_init__(self):
        choices = {"norm": ("imagenet", "clip"), "schedule": ("constant", "cosine"),
                   "decode": ("dgsnet", "pil"), "patch_selection": ("auto", "cpu", "device"), "jpeg_decoder": ("cpu", "device"), "activation": ("auto", "quick_gelu", "gelu"),
                   "lora_scaling": ("sqrt", "linear"), "lora_dropout_masks": ("separate", "shared"),
                   "surgery": ("none", "feature", "layer", "both"), "variant": ("published", "paper"),
                   "amp": ("auto", "bf16", "fp16", "off"),
                   "backend": ("reference", "cpp", "cuda", "triton", "auto")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.jpeg_decoder == "device":  # the device decodes, so selection runs there; no pixels in the workers
            if self.patch_selection == "cpu":
                raise ValueError("jpeg_decoder='device' hands the pixels to the patch selection on the device: "
                                 "use --patch-selection device (or auto), or --jpeg-decoder cpu")
            if max(self.blur_prob, self.jpeg_prob, self.resize_prob) > 0:
                raise ValueError("jpeg_decoder='device' leaves no pixels in the DataLoader workers for the "
                                 "blur/JPEG/resize augmentations: set --blur-prob, --jpeg-prob and --resize-prob "
                                 "to 0, or use --jpeg-decoder cpu")
        for name in ("batch_size", "accum", "log_every", "ckpt_every", "layer_refresh", "teacher_epochs", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "teacher_lr", "eps", "layer_eps"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("lam", "weight_decay"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {self.betas}")
        if self.pixel_budget is not None and not (math.isfinite(self.pixel_budget) and self.pixel_budget > 0):
            raise ValueError(f"pixel_budget must be a number of megapixels > 0 (or unset for the default), "
                             f"got {self.pixel_budget}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or unset for whole epochs), got {self.max_steps}")
        if self.pretrained in ("", "none", "None"):
            self.pretrained = None
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: choose one of {', '.join(PRESETS)}")
        if not 0.0 <= self.caption_max_template <= 1.0:
            raise ValueError(f"caption_max_template must be a fraction in [0, 1], got {self.caption_max_template}")
        self.report_to = _report_targets(self.report_to)
        self._check_validation()

    def _check_validation(self) -> None:
        if self.val_every is not None and self.val_every < 0:
            raise ValueError(f"val_every must be >= 0 (0 or unset: at each epoch's end), got {self.val_every}")
        if self.best_metric is not None and self.best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric={self.best_metric!r}: choose one of {', '.join(BEST_METRICS)}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ValueError(f"early_stop must be >= 1 validations, got {self.early_stop}")
        if not self.val_data:
            given = [flag for flag, value in (("--best-metric", self.best_metric), ("--early-stop", self.early_stop),
                                              ("--val-every", self.val_every)) if value is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} need a validation set: add --val-data DIR "
                                 "(same layouts as --data), or drop them")

    @property
    def selection_metric(self) -> str:
        """The validation metric that picks <out>/best/ (ap unless --best-metric says otherwise)."""
        return self.best_metric or "ap"

    def backbone(self) -> BackboneSpec:
        from dgsnet.models import BackboneSpec

        return BackboneSpec(model=self.model, pretrained=self.pretrained, init_seed=self.init_seed,
                            activation=self.activation)

    def lora(self) -> LoRAConfig:
        from dgsnet.models import LoRAConfig

        blocks = "all" if str(self.lora_blocks) == "all" else [int(b) for b in str(self.lora_blocks).split(",")]
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                          targets=tuple(self.lora_targets), blocks=blocks, scaling=self.lora_scaling,
                          dropout_masks=self.lora_dropout_masks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        from dgsnet.fileio import atomic_write

        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        values = _legacy_keys(values, source)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; valid keys are the `dgsnet train --help` flags")
        typed = {k: _typed(known[k], v, source) for k, v in values.items()}
        try:
            return cls(**typed)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def with_preset(cls, preset: str | None, values: dict | None = None, source: str = "config") -> TrainConfig:
        """The preset's settings, then `values` over them (an unknown preset is an error)."""
        values = dict(values or {})
        if preset is None:
            return cls.from_dict(values, source=source)
        if preset not in PRESETS:
            raise ValueError(f"{source}: preset {preset!r} does not exist; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[preset], **values, "preset": preset}, source=source)

    @classmethod
    def load(cls, path: str) -> TrainConfig:
        values = _read_yaml(path)
        return cls.with_preset(values.get("preset"), values, source=path)


#: Settings that only say how a run executes, not what it computes: a resumed run may change them.
#: Validation (val_data, val_every, best_metric) only decides which weights are copied to best/:
#: it runs in eval mode on a forked RNG, so the trajectory is the same; early_stop ends the run
#: and is compared.
RUNTIME_ONLY = frozenset({"out", "workers", "log_every", "ckpt_every", "tensorboard", "caption_cache", "device",
                          "backend", "compile", "strict_data", "fsdp", "preset", "patch_selection",
                          "pixel_budget", "report_to", "wandb_project", "val_data", "val_every", "best_metric"})


def _report_targets(values) -> list[str]:
    """--report-to as a clean list: commas or spaces separate, `none` means nothing."""
    if isinstance(values, str):
        values = [values]
    names = [part.strip() for value in values for part in str(value).split(",") if part.strip()]
    names = [n for n in dict.fromkeys(names) if n != "none"]
    unknown = [n for n in names if n not in REPORT_TARGETS]
    if unknown:
        raise ValueError(f"report_to: {', '.join(map(repr, unknown))} is not a target; choose from "
                         f"{', '.join(REPORT_TARGETS)} (comma-separated), or none")
    return names


def _legacy_keys(values: dict, source: str) -> dict:
    """Keys of configs saved by older dgsnet versions, mapped to today's (old runs must resume)."""
    if "tensorboard" not in values:
        return values
    values = dict(values)
    old = values.pop("tensorboard")
    if not isinstance(old, bool):
        raise ValueError(f"{source}: tensorboard: {old!r} is not a boolean (true or false); "
                         "today's key is report_to: [tensorboard]")
    if old:
        current = values.get("report_to") or []
        values["report_to"] = [*([current] if isinstance(current, str) else current), "tensorboard"]
    return values


def result_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """{key: (saved, current)} for settings that change what a resumed run computes.

    Keys the saved config lacks (a run from an older dgsnet) are not compared."""
    return {k: (saved[k], current[k]) for k in sorted(set(saved) & set(current))
            if k not in RUNTIME_ONLY and _normal(saved[k]) != _normal(current[k])}


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _typed(f: dataclasses.Field, value, source: str):
    """`value` as the field's type, or a ValueError naming the key and the file.

    YAML 1.1 reads `1e-4` as a string: numbers in that form are taken as floats. Booleans must be
    booleans (YAML's "no" is one; the string "no" is not), and a bool is never a number."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    optional = type(None) in typing.get_args(hint)
    kind = _field_type(f)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {f.name} needs a value ({kind.__name__ if isinstance(kind, type) else kind})")

    def bad(what: str):
        return ValueError(f"{source}: {f.name}: {value!r} is not {what}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad("a boolean (true or false)")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind is float:
        return _typed_scalar(float, value, f.name, source, "")
    if f.name == "report_to" and isinstance(value, str):  # `report_to: tensorboard,wandb` in a file
        value = [value]
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list of {inner.__name__} (e.g. [{', '.join(['...'] * 2)}])")
        return [_typed_scalar(inner, v, f.name, source, "element ") for v in value]
    if kind is str and not isinstance(value, str):
        if f.name in ("lora_blocks", "pretrained") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    return value


def _typed_scalar(kind, value, name: str, source: str, what: str):
    if kind is float:
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            return float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    noun = {"float": "number", "int": "integer", "str": "string"}[kind.__name__]
    raise ValueError(f"{source}: {name}: {what}{value!r} is not a {noun}")


def _read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"{path}: not valid YAML ({' '.join(first[:3])}); a config file is a mapping of "
                         "keys to values, e.g. `lr: 1.0e-4`") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; a config file is a YAML mapping") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a YAML mapping of keys to values")
    return values


def _field_type(f: dataclasses.Field):
    """The field's type without Optional: int, float, str, bool or list[...]."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if typing.get_origin(hint) is list:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _field_docs() -> dict[str, str]:
    """The inline comment of each TrainConfig field: the one place its meaning is written."""
    docs = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if match:
            docs[match.group(1)] = match.group(2)
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                         stage: int | None = None) -> None:
    """One flag per config field (--lr, --lora-rank, ...); unset flags keep file/default values.

    `stage` 1 or 2: the flags only the other stage reads are not offered (giving one is an
    'unrecognized arguments' error that names the command having it)."""
    from dgsnet.train.flags import LIST_FLAGS, STAGE_COMMANDS, STAGE_ONLY, ListAction, OtherStageFlag

    parser.add_argument("--config", help="YAML file of config keys (flags override it); it may hold the "
                                         "keys of both stages, each stage uses its own")
    docs, defaults = _field_docs(), TrainConfig().to_dict()
    other = 3 - stage if stage in (1, 2) else None
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f)
        if other is not None and f.name in STAGE_ONLY[other]:
            names = [flag, "--no-" + flag[2:]] if kind is bool else [flag]
            parser.add_argument(*names, dest=f"other_stage_{f.name}", action=OtherStageFlag,
                                owner=STAGE_COMMANDS[other])
            continue
        # argparse %-formats help strings: a literal % in a field's comment must be doubled.
        text = f"{docs.get(f.name, '')} (default: {defaults[f.name]})".strip().replace("%", "%%")
        if f.name in LIST_FLAGS:
            parser.add_argument(flag, dest=f.name, action=ListAction, default=None,
                                help=f"{text}; {LIST_FLAGS[f.name].forms}".replace("%", "%%"))
        elif kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif typing.get_origin(kind) is list:
            inner = typing.get_args(kind)[0]
            parser.add_argument(flag, dest=f.name, nargs="+", type=inner, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind if kind in (int, float) else str, default=None,
                                help=text)


def config_from_args(args: argparse.Namespace, *, stage: int | None = None, **fixed) -> TrainConfig:
    """defaults < --preset < (stage 2) the --teacher run's backbone < --config file < flags < `fixed`."""
    base = _read_yaml(args.config) if getattr(args, "config", None) else {}
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            base[f.name] = value
    base.update(fixed)
    preset = base.get("preset")
    if preset in PRESETS:
        overridden = sorted(k for k in PRESETS[preset] if k in base and base[k] != PRESETS[preset][k])
        if overridden:
            print(f"preset {preset}: overridden by your config/flags: "
                  + ", ".join(f"{k}={base[k]!r} (preset {PRESETS[preset][k]!r})" for k in overridden), flush=True)
    if stage == 2 and base.get("teacher"):
        from dgsnet.train.inherit import inherit

        given = dict(base)
        base = inherit(base, str(base["teacher"]))  # a bad --teacher fails here, before any model
        taken = {k: v for k, v in base.items() if k not in given}
        if taken:
            print(f"from --teacher {base['teacher']}: " + ", ".join(f"{k}={v!r}" for k, v in taken.items()),
                  flush=True)
    return TrainConfig.with_preset(preset, base, source=getattr(args, "config", None) or "flags")
