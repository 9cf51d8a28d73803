"""`dgsnet convert-official` end to end: converted runs give the reference model's logits
(trained model or --as-published-test), and a stage-1 file converts and checks a stage-2 one."""
import json
import os

import pytest
import torch

from dgsnet.models.checkpoint import load_model
from tests.convert.published import (ALPHA, IMAGE, LAYERS, PATCH, RANK, convert, logits, lora_layers,
                                     reference_logits, twice_merged_reference)


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

