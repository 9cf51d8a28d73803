"""Inference patch layout (raster or the published per-file shuffle) and the published PIL decoding."""
import numpy as np
import pytest
from PIL import Image

from dgsnet.data.dataset import FolderDataset
from dgsnet.data.layouts import Sample
from dgsnet.image.decode import load_rgb
from dgsnet.image.preprocess import (NORMS, PATCH, Preprocess, inference_options, layout_rng, normalize,
                                     select_patches)

from tests.data.trees import write_image


def _patches(tile):
    """The 49 patches of a 224x224 tile as a sorted list of byte strings (a layout-free identity)."""
    return sorted(tile[r:r + PATCH, c:c + PATCH].tobytes() for r in range(0, 224, PATCH)
                  for c in range(0, 224, PATCH))


@pytest.fixture()
def photo(tmp_path):
    return write_image(tmp_path / "a" / "img_7.png", seed=5, size=(300, 260))


def test_raster_is_no_shuffle_and_shuffle_is_seeded_by_the_file_name(tmp_path, photo):
    assert layout_rng("raster", photo) is None
    elsewhere = write_image(tmp_path / "b" / "deeper" / "img_7.png", seed=5, size=(300, 260))
    rgb = load_rgb(photo)
    one = select_patches(rgb, layout_rng("shuffle", photo))
    assert np.array_equal(one, select_patches(rgb, layout_rng("shuffle", elsewhere)))  # same name, same layout
    assert not np.array_equal(one, select_patches(rgb, layout_rng("shuffle", tmp_path / "other.png")))
    assert not np.array_equal(one, select_patches(rgb, layout_rng("shuffle", photo, seed=101)))
    raster = select_patches(rgb)
    assert not np.array_equal(one, raster) and _patches(one) == _patches(raster)  # same patches, moved
    with pytest.raises(ValueError, match="patch order"):
        layout_rng("random", photo)


def test_eval_dataset_and_predict_preprocess_agree_on_the_shuffled_layout(photo):
    rgb = load_rgb(photo)
    sample = Sample(path=str(photo), label=1, group="")
    raster = FolderDataset([sample], ["c"])[0][0].numpy()
    shuffled = FolderDataset([sample], ["c"], patch_order="shuffle")[0][0].numpy()
    prep = Preprocess("imagenet", patch_order="shuffle")
    np.testing.assert_array_equal(shuffled, prep(rgb, path=photo))
    np.testing.assert_array_equal(raster, Preprocess("imagenet")(rgb))
    np.testing.assert_array_equal(shuffled, normalize(select_patches(rgb, layout_rng("shuffle", photo))))
    assert not np.array_equal(shuffled, raster)
    with pytest.raises(ValueError, match="path="):
        prep(rgb)


def test_runtime_preprocessing_is_preprocess_configured_by_the_files_metadata(fp32_export, photo):
    import dataclasses

    import onnxruntime as ort
    from dgsnet_export.runtime.metadata import NORMALIZE, PATCH_SELECTION, ModelInfo
    from dgsnet_export.runtime.preprocessing import preprocess_for

    props = ort.InferenceSession(str(fp32_export[0]), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    info = ModelInfo.from_props(props)
    rgb = load_rgb(photo)
    torch_side = Preprocess("imagenet", patch_order="shuffle", patch_seed=7)
    np.testing.assert_array_equal(preprocess_for(info, patch_order="shuffle", patch_seed=7)(rgb, path=photo),
                                  torch_side(rgb, path=photo))
    # a graph that normalises itself gets the uint8 tile
    tiles = preprocess_for(dataclasses.replace(info, caller_steps=(PATCH_SELECTION,)))(rgb)
    assert tiles.dtype == np.uint8 and tiles.shape == (224, 224, 3)
    np.testing.assert_array_equal(tiles, select_patches(rgb))
    # without patch selection an image of the input size goes in as it is; another size is refused
    plain = preprocess_for(dataclasses.replace(info, caller_steps=(NORMALIZE,)))
    np.testing.assert_array_equal(plain(rgb[:224, :224]), normalize(rgb[:224, :224], *NORMS["imagenet"]))
    with pytest.raises(ValueError, match="224x224"):
        plain(rgb[:100, :120])


def test_published_decoding_keeps_the_stored_orientation_and_drops_alpha(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, quality=95, exif=exif)
    assert load_rgb(path).shape == (30, 20, 3)  # dgsnet turns it as a viewer shows it
    assert load_rgb(path, decode="pil").shape == (20, 30, 3)  # the published loader does not
    rgba = np.dstack([rgb, np.full((20, 30), 0, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "clear.png", decode="pil"), rgb)  # alpha dropped
    assert (load_rgb(tmp_path / "clear.png") == 255).all()  # composited on white
    with pytest.raises(ValueError, match="decode"):
        load_rgb(path, decode="cv2")


def test_inference_preset_and_explicit_flags():
    assert inference_options() == {"patch_order": "raster", "patch_seed": 100, "decode": "dgsnet"}
    assert inference_options("published") == {"patch_order": "shuffle", "patch_seed": 100, "decode": "pil"}
    assert inference_options("published", patch_order="raster")["patch_order"] == "raster"
    with pytest.raises(ValueError, match="preset"):
        inference_options("paper")


def test_training_dataset_decodes_as_the_config_says(tmp_path):
    from dgsnet.data import build_train_dataset
    from dgsnet.train import TrainConfig

    from tests.data.trees import labelled_folder

    labelled_folder(tmp_path / "train")
    for decode in ("dgsnet", "pil"):
        cfg = TrainConfig(data=str(tmp_path / "train"), decode=decode, model="dgs-tiny", pretrained=None)
        assert build_train_dataset(cfg).decode == decode
