"""Files in another layout (dgsnet.convert.read): refused, naming the missing keys."""
import torch

from tests.convert.published import convert


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

