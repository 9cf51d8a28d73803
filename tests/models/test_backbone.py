"""The backbone's activation follows its weights: QuickGELU for OpenAI CLIP, and a contradiction is an error."""
import pytest
import torch
from safetensors.torch import save_file

from dgsnet.models import BackboneSpec, DGSNetModel, create_clip
from dgsnet.models.backbone import activation_of, is_torchscript_archive, resolve_activation


def test_openai_tag_resolves_to_quick_gelu_offline():
    # open_clip's plain ViT-L-14 config has nn.GELU; OpenAI's weights were trained with QuickGELU.
    assert resolve_activation(BackboneSpec("ViT-L-14", "openai")) == "quick_gelu"
    assert resolve_activation(BackboneSpec("ViT-B-16", "openai")) == "quick_gelu"
    assert resolve_activation(BackboneSpec("ViT-L-14", "laion2b_s32b_b82k")) == "gelu"
    assert resolve_activation(BackboneSpec("dgs-tiny", None)) == "gelu"


@pytest.mark.parametrize("activation", ["gelu", "config"])
def test_activation_contradicting_the_weights_is_an_error(activation):
    with pytest.raises(ValueError, match="trained with quick_gelu"):
        resolve_activation(BackboneSpec("ViT-L-14", "openai", activation=activation))


def _quick_tiny():
    clip = create_clip(BackboneSpec("dgs-tiny", None, init_seed=3, activation="quick_gelu"))
    assert activation_of(clip) == "quick_gelu"
    return clip


def _features(clip, seed=0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return clip.visual(x), clip.encode_text(torch.randint(0, 400, (2, 77), generator=torch.Generator().manual_seed(seed)))


def test_openai_torchscript_file_builds_quick_gelu_and_identical_features(tmp_path):
    """A local OpenAI-format release (a TorchScript archive) loads as QuickGELU with no flag."""
    clip = _quick_tiny()
    path = str(tmp_path / "ViT-tiny.pt")
    torch.jit.save(torch.jit.trace_module(clip, {"encode_image": torch.randn(1, 3, 224, 224)}, check_trace=False), path)
    assert is_torchscript_archive(path)
    spec = BackboneSpec("dgs-tiny", path)
    assert resolve_activation(spec) == "quick_gelu"
    loaded = create_clip(spec)
    assert activation_of(loaded) == "quick_gelu"
    for got, want in zip(_features(loaded), _features(clip)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained with quick_gelu"):
        create_clip(BackboneSpec("dgs-tiny", path, activation="gelu"))


def test_state_dict_file_needs_the_activation_it_was_trained_with(tmp_path):
    """A plain state dict does not say its activation: --activation quick_gelu reproduces the features,
    the config's GELU does not (the silent error dgsnet used to make with OpenAI weights)."""
    clip = _quick_tiny()
    path = str(tmp_path / "tiny.safetensors")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, path)
    right = create_clip(BackboneSpec("dgs-tiny", path, activation="quick_gelu"))
    wrong = create_clip(BackboneSpec("dgs-tiny", path))
    assert activation_of(wrong) == "gelu"
    want = _features(clip)[0]
    torch.testing.assert_close(_features(right)[0], want, rtol=0, atol=0)
    assert (_features(wrong)[0] - want).abs().max() > 1e-4


def test_model_config_file_and_recorded_activation(tmp_path):
    import json

    import open_clip

    cfg = open_clip.get_model_config("dgs-tiny")
    cfg["quick_gelu"] = True
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(cfg))
    model = DGSNetModel(BackboneSpec(str(path), None))
    assert model.activation == "quick_gelu"
    assert model.encode_captions(["a photo"]).shape == (1, model.dim)


def test_checkpoint_of_another_activation_is_refused(tmp_path):
    from dgsnet.models import checkpoint as ckpt

    model = DGSNetModel(BackboneSpec("dgs-tiny", None))
    ckpt.write_model(str(tmp_path), model, stage=2, config={}, step=0)
    other = DGSNetModel(BackboneSpec("dgs-tiny", None, activation="quick_gelu"))
    with pytest.raises(ValueError, match="resolved_activation"):
        ckpt.check_backbone(ckpt.read_metadata(str(tmp_path)), other, str(tmp_path))
    loaded, meta = ckpt.load_model(str(tmp_path))
    assert loaded.activation == meta["backbone"]["resolved_activation"] == "gelu"
