"""The published files (stage 2 merged and unmerged, stage 1) that the converter's tests convert."""
import pytest
import torch

from tests.convert.published import IMAGE, Reference, published_state, text_tower


@pytest.fixture(scope="package")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    ref, text = Reference().eval(), text_tower()
    states = {"unmerged": published_state(ref, text), "merged": published_state(ref, text, merged=True)}
    paths = {}
    for name, state in states.items():
        paths[name] = str(root / f"{name}_model_epoch_step2.pth")
        torch.save(state, paths[name])
    s2 = states["unmerged"]
    frozen = "clip_model_frozen.clip_model_frozen."
    stage1 = {"clip_model_frozen." + k[len(frozen):]: v for k, v in s2.items() if k.startswith(frozen)}
    stage1.update({k: s2["clip_model_frozen." + k] for k in ("img_frozen_fc.weight", "img_frozen_fc.bias")})
    paths["stage1"] = str(root / "model_epoch_step1.pth")
    torch.save(stage1, paths["stage1"])
    images = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    return {"ref": ref, "states": states, "paths": paths, "images": images, "root": root, "stage1": stage1}
