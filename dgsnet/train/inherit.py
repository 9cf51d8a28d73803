"""Stage 2 runs on its teacher's backbone: the settings it takes from --teacher, and the check that
they agree, both before any model is built."""
from __future__ import annotations

import os

#: What stage 2 must share with its stage-1 run: the teacher head was fitted to the features of this
#: backbone (model, weights, activation; init_seed when random-initialised) on inputs normalised so.
TEACHER_KEYS = ("model", "pretrained", "activation", "init_seed", "norm")
_ACTIVATIONS = ("auto", "quick_gelu", "gelu")  # TrainConfig's choices


def read_teacher(teacher_dir: str) -> dict:
    """The model.json of a finished stage-1 run, or an error saying what --teacher must be."""
    from dgsnet.models import checkpoint as ckpt

    if not os.path.isdir(teacher_dir):
        raise FileNotFoundError(f"--teacher {teacher_dir}: no such folder; give the --out folder of a finished "
                                "`dgsnet train-teacher` run")
    try:
        meta = ckpt.read_metadata(teacher_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--teacher: {exc}; finish the `dgsnet train-teacher` run first") from None
    if meta["stage"] != 1:
        raise ValueError(f"--teacher {teacher_dir} is a stage-{meta['stage']} checkpoint; --teacher wants the "
                         "output directory of `dgsnet train-teacher`")
    if not os.path.isfile(os.path.join(teacher_dir, ckpt.MODEL_FILE)):
        raise FileNotFoundError(f"--teacher {teacher_dir}: {ckpt.MODEL_FILE} is missing next to {ckpt.META_FILE}; "
                                "the run is incomplete: train the teacher again")
    return meta


def teacher_settings(meta: dict, teacher_dir: str, trusted_weights: str | None = None) -> dict:
    """TEACHER_KEYS as the teacher ran them. A weights file outside the teacher's folder is taken only
    when the user names it too (`trusted_weights`, --pretrained), as everywhere in dgsnet."""
    from dgsnet.models import checkpoint as ckpt

    spec = ckpt.backbone_spec(meta, teacher_dir, trusted_weights)
    values = {"model": spec.model, "pretrained": spec.pretrained, "init_seed": spec.init_seed,
              "norm": meta.get("norm", meta["config"].get("norm", "imagenet"))}
    activation = spec.activation if spec.activation in _ACTIVATIONS else \
        ckpt.recorded_activation(meta["backbone"])  # runs older than `activation`: what the blocks ran
    if activation in _ACTIVATIONS:
        values["activation"] = activation
    return values


def inherit(values: dict, teacher_dir: str) -> dict:
    """`values` (config file + flags) with the teacher's settings for every key they do not give."""
    settings = teacher_settings(read_teacher(teacher_dir), teacher_dir, values.get("pretrained"))
    return {**{k: v for k, v in settings.items() if k not in values}, **values}


def _same(a, b) -> bool:
    """Equal, or the same existing file under two spellings."""
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b) \
        and os.path.realpath(a) == os.path.realpath(b)


def check_teacher(cfg) -> dict:
    """Refuses a missing, unfinished or stage-2 --teacher, and one whose backbone settings differ from
    `cfg` (a TrainConfig), naming both values. Returns the teacher's model.json."""
    from dgsnet.models.backbone import resolve_activation

    meta = read_teacher(cfg.teacher)
    want = teacher_settings(meta, cfg.teacher, cfg.pretrained)
    diffs = [(k, repr(want[k]), repr(getattr(cfg, k))) for k in ("model", "pretrained", "norm")
             if not _same(want[k], getattr(cfg, k))]
    if cfg.pretrained is None and cfg.init_seed != want["init_seed"]:
        diffs.append(("init_seed", want["init_seed"], f"{cfg.init_seed} (random-initialised: another "
                                                        "visual_fingerprint)"))
    ran = meta["backbone"].get("resolved_activation")
    if not diffs and ran is not None:  # compare what the blocks run: auto may resolve to quick_gelu
        runs = resolve_activation(cfg.backbone())
        if runs != ran:
            diffs.append(("activation", f"{want.get('activation', ran)!r} (runs {ran})",
                          f"{cfg.activation!r} (runs {runs})"))
    if diffs:
        said = "; ".join(f"{k}: checkpoint {a} vs this run {b}" for k, a, b in diffs)
        flags = " ".join("--" + k.replace("_", "-") for k, _, _ in diffs)
        raise ValueError(f"--teacher {cfg.teacher} was trained on another backbone ({said}). Leave {flags} "
                         "unset (dgsnet train takes them from --teacher), or train a teacher with these settings")
    return meta
