"""Student tensors that differ from the frozen copy (dgsnet.convert.verify): reported by name."""
import torch

from tests.convert.published import convert, logits, reference_logits


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

