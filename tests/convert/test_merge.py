"""Merged or not (dgsnet.convert.merge): a wrong alpha, swapped q/k and layers without an update."""
import os

import torch

from tests.convert.published import ALPHA, LAYERS, RANK, WIDTH, convert


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



def test_layers_with_zero_lora_update_are_undecidable_and_decided_from_the_others(files):
    from dgsnet.convert import FROZEN, STUDENT, detect_merge, infer_architecture, lora_layout, with_prefix

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
