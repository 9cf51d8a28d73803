"""`--preset published`: every knob at the published behaviour; config files and flags still win."""
import pytest
import torch

from dgsnet.cli import build_parser
from dgsnet.models.lora import lora_modules
from dgsnet.train import TrainConfig, train_teacher
from dgsnet.train.config import PRESETS, config_from_args
from tests.train.toy_data import ToyDataset

# What the published code does (HorizonTEL/DGS-Net, with CLIP-LoRA's layers), knob by knob.
PUBLISHED = {
    "model": "ViT-L-14", "pretrained": "openai", "activation": "quick_gelu",
    "lora_rank": 6, "lora_alpha": 6.0, "lora_scaling": "sqrt", "lora_dropout": 0.8,
    "lora_dropout_masks": "separate", "lora_targets": ["q", "k", "v"], "lora_blocks": "all",
    "amp": "off", "decode": "pil", "drop_last": False, "batch_size": 32, "lr": 1e-4, "teacher_lr": 1e-4,
    "betas": [0.9, 0.999], "teacher_epochs": 3, "epochs": 1, "surgery": "feature", "variant": "published",
    "lam": 0.2, "eps": 1e-6, "norm": "imagenet", "flip_prob": 0.5,
}


def _parse(*argv):
    return config_from_args(build_parser().parse_args(["train", "--data", "x", *argv]))


def test_preset_sets_every_published_knob():
    cfg = _parse("--preset", "published")
    for key, want in PUBLISHED.items():
        assert getattr(cfg, key) == want, key
    assert cfg.preset == "published"
    assert set(PUBLISHED) <= set(PRESETS["published"])


def test_dgsnet_defaults_differ_where_the_readme_says():
    cfg = _parse()
    assert (cfg.amp, cfg.decode, cfg.drop_last, cfg.activation) == ("auto", "dgsnet", True, "auto")
    assert cfg.lora_scaling == "sqrt" and cfg.lora_dropout_masks == "separate"  # published, also by default


def test_flags_and_config_files_override_the_preset(tmp_path, capsys):
    cfg = _parse("--preset", "published", "--lr", "3e-4", "--amp", "bf16")
    assert cfg.lr == 3e-4 and cfg.amp == "bf16" and cfg.decode == "pil"
    assert "overridden" in capsys.readouterr().out
    path = tmp_path / "run.yaml"
    path.write_text("preset: published\nbatch_size: 16\n")
    from_file = _parse("--config", str(path))
    assert from_file.batch_size == 16 and from_file.amp == "off" and from_file.preset == "published"
    assert _parse("--config", str(path), "--batch-size", "8").batch_size == 8


def test_saved_config_reloads_to_the_same_run(tmp_path):
    cfg = _parse("--preset", "published", "--epochs", "2")
    cfg.save(str(tmp_path / "config.yaml"))
    assert TrainConfig.load(str(tmp_path / "config.yaml")).to_dict() == cfg.to_dict()


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset"):
        _parse("--preset", "paper")


def test_preset_model_runs_published_lora_on_a_small_backbone(tmp_path):
    """The preset's knobs reach the model and the loader (tiny random backbone instead of ViT-L/14)."""
    data = ToyDataset(20)
    cfg = TrainConfig.with_preset("published", {"model": "dgs-tiny", "pretrained": None, "workers": 0,
                                                "batch_size": 8, "out": str(tmp_path / "t")})
    model = train_teacher(cfg, data)
    assert model.activation == "quick_gelu"
    mod = lora_modules(model.visual)[0]
    assert mod.scale == pytest.approx(6 / 6 ** 0.5) and mod.separate_masks
    # The last partial batch is kept: 20 images in batches of 8 are 3 steps per epoch, 3 epochs.
    from dgsnet.models import checkpoint as ckpt

    assert ckpt.read_metadata(cfg.out)["step"] == 9
    assert torch.isfinite(model.teacher_head.weight).all()
