"""A checkpoint's weights path is data: followed inside its run directory, else only when the user names it."""
import json
import os

import pytest
from safetensors.torch import save_file

from dgsnet.cli import main
from dgsnet.models import BackboneSpec, DGSNetModel, LoRAConfig, create_clip
from dgsnet.models import checkpoint as ckpt


@pytest.fixture()
def run_with_outside_weights(tmp_path):
    weights = tmp_path / "elsewhere" / "tiny.safetensors"
    weights.parent.mkdir()
    clip = create_clip(BackboneSpec("dgs-tiny", None, init_seed=4))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    run = tmp_path / "run"
    model = DGSNetModel(BackboneSpec("dgs-tiny", str(weights)), LoRAConfig())
    ckpt.write_model(str(run), model, stage=2, config={"norm": "imagenet"}, step=1)
    return run, weights


def test_weights_outside_the_run_need_the_users_confirmation(run_with_outside_weights, tmp_path):
    run, weights = run_with_outside_weights
    with pytest.raises(ValueError, match="--pretrained .*tiny.safetensors"):
        ckpt.load_model(str(run))
    model, _ = ckpt.load_model(str(run), trusted_weights=str(weights))
    assert model.spec.pretrained == str(weights)
    other = tmp_path / "other.safetensors"
    other.write_bytes(weights.read_bytes())
    with pytest.raises(ValueError, match="not followed on their own"):
        ckpt.load_model(str(run), trusted_weights=str(other))  # a copy is not the file the run names


def test_eval_cli_refuses_then_accepts_with_pretrained(run_with_outside_weights, tmp_path, capsys, make_test_set):
    run, weights = run_with_outside_weights
    make_test_set(tmp_path / "test")
    argv = ["eval", "--ckpt", str(run), "--data", str(tmp_path / "test"), "--workers", "0", "--no-plot",
            "--out", str(tmp_path / "rep")]
    assert main(argv) == 2
    assert "--pretrained" in capsys.readouterr().err
    assert main([*argv, "--pretrained", str(weights)]) == 0


def test_weights_inside_the_run_directory_are_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    clip = create_clip(BackboneSpec("dgs-tiny", None, init_seed=4))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(run / "backbone.safetensors"))
    model = DGSNetModel(BackboneSpec("dgs-tiny", str(run / "backbone.safetensors")), LoRAConfig())
    ckpt.write_model(str(run), model, stage=2, config={}, step=1)
    meta = json.loads((run / ckpt.META_FILE).read_text())
    meta["backbone"]["pretrained"] = "backbone.safetensors"  # recorded relative to the run
    (run / ckpt.META_FILE).write_text(json.dumps(meta))
    loaded, _ = ckpt.load_model(str(run))
    assert os.path.samefile(loaded.spec.pretrained, run / "backbone.safetensors")
