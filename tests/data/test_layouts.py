"""Folder layouts, captions and the builders the trainer and `dgsnet eval` call."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from dgsnet.data import (LayoutError, build_eval_subsets, build_train_dataset, find_samples, find_subsets,
                         parse_perturbations)
from dgsnet.data.captions import CaptionsError
from dgsnet.train.config import TrainConfig

from .trees import labelled_folder, progan_tree, subsets_tree, write_captions, write_image


def labels_by_name(samples):
    return {Path(s.path).name: s.label for s in samples}


def test_single_folder_layout(tmp_path):
    labelled_folder(tmp_path, 2, 3)
    samples = find_samples(tmp_path)
    assert labels_by_name(samples) == {"r0.png": 0, "r1.png": 0, "f0.png": 1, "f1.png": 1, "f2.png": 1}
    assert all(s.group == "" for s in samples)
    assert find_subsets(tmp_path) == [(tmp_path.name, tmp_path.resolve())]


def test_progan_layout_groups_by_class(tmp_path):
    progan_tree(tmp_path, classes=("car", "cat", "horse"))
    samples = find_samples(tmp_path)
    assert len(samples) == 9
    assert sorted({s.group for s in samples}) == ["car", "cat", "horse"]
    assert [s.label for s in samples if s.group == "cat"] == [0, 1, 1]


def test_subsets_layout(tmp_path):
    counts = subsets_tree(tmp_path)
    subsets = build_eval_subsets(tmp_path)
    assert [name for name, _ in subsets] == sorted(counts)
    for name, dataset in subsets:
        assert len(dataset) == counts[name]
    progan = dict(subsets)["progan"]
    assert progan.counts() == (2, 4)
    # training on the whole tree reads every subset
    assert len(find_samples(tmp_path)) == sum(counts.values())


@pytest.mark.parametrize("make, needle", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no 0_real/ or 1_fake/"),
    (lambda root: (root / "0_real").mkdir(parents=True), "hold no image files"),
    (lambda root: (root / "whatever" / "images").mkdir(parents=True), "no 0_real/ or 1_fake/"),
])
def test_layout_errors_name_folder_and_layout(tmp_path, make, needle):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(LayoutError) as info:
        find_samples(root)
    message = str(info.value)
    assert needle in message and str(root) in message and "expected <root>/0_real" in message


def test_non_image_files_are_ignored(tmp_path):
    labelled_folder(tmp_path, 1, 1)
    (tmp_path / "0_real" / "notes.txt").write_text("x")
    (tmp_path / "0_real" / ".hidden.png").write_bytes(b"")
    assert len(find_samples(tmp_path)) == 2


def test_training_needs_both_labels(tmp_path):
    write_image(tmp_path / "0_real" / "a.png", 0)
    with pytest.raises(LayoutError, match="no images in any 1_fake/"):
        build_train_dataset(TrainConfig(data=str(tmp_path)))


def test_captions_file_and_fallback_count_logged_once(tmp_path, caplog):
    progan_tree(tmp_path, classes=("car", "cat"))
    write_captions(tmp_path, {"car/0_real/r0.png": "a red car on a road", "./cat/1_fake/f1.png": "a cat",
                              str(tmp_path.resolve() / "cat/1_fake/nested/f0.png"): "a tabby cat"})
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        dataset = build_train_dataset(TrainConfig(data=str(tmp_path), caption_max_template=0.5))  # 3 of 6 on the template
    by_path = {Path(p).relative_to(tmp_path.resolve()).as_posix(): c for p, c in zip(dataset.paths, dataset.captions)}
    assert by_path["car/0_real/r0.png"] == "a red car on a road"
    assert by_path["cat/1_fake/f1.png"] == "a cat"
    assert by_path["cat/1_fake/nested/f0.png"] == "a tabby cat"  # absolute key
    assert by_path["car/1_fake/nested/f0.png"] == "a photo of a car"  # template names the class, not the label
    assert by_path["cat/0_real/r0.png"] == "a photo of a cat"
    warnings = [r.getMessage() for r in caplog.records if "template caption" in r.getMessage()]
    assert len(warnings) == 1 and "3 of 6 images" in warnings[0]


def test_eval_subsets_read_no_captions(tmp_path, caplog):
    # scoring never uses captions: eval neither reads a captions file nor warns about missing ones
    subsets_tree(tmp_path)
    write_captions(tmp_path, {"gan_a/0_real/r0.png": "x"})
    with caplog.at_level(logging.INFO, logger="dgsnet.data"):
        subsets = build_eval_subsets(tmp_path)
    assert not [r for r in caplog.records if "caption" in r.getMessage()]
    assert "x" not in [c for _, d in subsets for c in d.captions]


def test_explicit_captions_file_errors(tmp_path):
    labelled_folder(tmp_path, 1, 1)
    missing = tmp_path / "nope.json"
    with pytest.raises(CaptionsError, match="nope.json: captions file does not exist"):
        build_train_dataset(TrainConfig(data=str(tmp_path), captions=str(missing)))
    bad = tmp_path / "bad.json"
    bad.write_text('["not", "a", "mapping"]')
    with pytest.raises(CaptionsError, match="bad.json: expected a JSON object"):
        build_train_dataset(TrainConfig(data=str(tmp_path), captions=str(bad)))


def test_train_items_match_trainer_contract(tmp_path):
    labelled_folder(tmp_path, 2, 2)
    cfg = TrainConfig(data=str(tmp_path), norm="clip", blur_prob=0.5, jpeg_prob=0.5, resize_prob=0.5)
    dataset = build_train_dataset(cfg)
    assert len(dataset.captions) == len(dataset) == 4
    image, label, caption, path = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 224, 224)
    assert label in (0, 1) and isinstance(caption, str) and Path(path).is_file()


def test_train_item_is_shuffled_tile_with_selected_norm(tmp_path):
    from dgsnet.data import item_rng
    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import CLIP_MEAN, CLIP_STD, select_patches

    labelled_folder(tmp_path, 1, 1)
    cfg = TrainConfig(data=str(tmp_path), norm="clip", flip_prob=0.0, seed=3)
    dataset = build_train_dataset(cfg)
    dataset.set_epoch(2)
    image, _, _, path = dataset[1]
    rng = item_rng(3, 2, 1)
    rng.random(3), rng.uniform(), rng.uniform(), rng.integers(30, 101)  # the augmentation draws come first
    tile = select_patches(load_rgb(path), rng=rng)
    expected = (tile / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert not np.array_equal(tile, select_patches(load_rgb(path)))  # the layout was shuffled
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def test_eval_items_are_deterministic_tiles(tmp_path):
    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, select_patches

    labelled_folder(tmp_path, 1, 1)
    (name, dataset), = build_eval_subsets(tmp_path)
    image, label, _, path = dataset[0]
    tile = select_patches(load_rgb(path))  # raster order, no augmentation
    expected = (tile / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert torch.equal(dataset[0][0], image)


def test_eval_perturbation_is_applied_before_selection(tmp_path):
    from dgsnet.image.decode import load_rgb
    from dgsnet.image.preprocess import normalize, select_patches

    labelled_folder(tmp_path, 1, 1)
    jpeg, = parse_perturbations("jpeg:50")
    (_, dataset), = build_eval_subsets(tmp_path, perturb=jpeg)
    image, _, _, path = dataset[1]
    expected = normalize(select_patches(jpeg(load_rgb(path))))
    np.testing.assert_array_equal(image.numpy(), expected)
    (_, clean), = build_eval_subsets(tmp_path)
    np.testing.assert_array_equal(clean.with_perturbation(jpeg)[1][0].numpy(), expected)
    assert not np.array_equal(clean[1][0].numpy(), expected)


def test_eval_skips_an_empty_subset_with_a_warning(tmp_path, caplog):
    labelled_folder(tmp_path / "gan_a", 1, 1)
    (tmp_path / "empty_gen" / "0_real").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        subsets = build_eval_subsets(tmp_path)
    assert [name for name, _ in subsets] == ["gan_a"]
    assert any("skipped subset empty_gen" in r.getMessage() and "hold no image files" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(LayoutError, match="hold no image files"):
        build_eval_subsets(tmp_path / "empty_gen")
