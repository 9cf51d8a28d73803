"""Augmentation is a function of (seed, epoch, index); perturbations parse and apply deterministically."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dgsnet.data import Augment, Perturbation, build_train_dataset, item_rng, parse_perturbations
from dgsnet.data.transforms import gaussian_blur, jpeg_recompress, rescale
from dgsnet.train.config import TrainConfig
from dgsnet.data.dataset import collate

from .trees import labelled_folder

ALL_ON = dict(flip_prob=0.5, blur_prob=0.5, jpeg_prob=0.5, resize_prob=0.5)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 14, 3)), np.ones((16, 16, 1)))
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def augmented(augment, image, seed, epoch, index):
    rng = item_rng(seed, epoch, index)
    from dgsnet.data import select_patches

    return augment.after_selection(select_patches(augment.before_selection(image, rng), rng), rng)


def test_same_seed_epoch_index_same_pixels(image):
    augment = Augment(**ALL_ON)
    first = augmented(augment, image, 1, 2, 3)
    np.testing.assert_array_equal(first, augmented(Augment(**ALL_ON), image, 1, 2, 3))
    others = [augmented(augment, image, *key) for key in ((0, 2, 3), (1, 0, 3), (1, 2, 4))]
    assert all(not np.array_equal(first, other) for other in others)  # each key component matters


def test_probabilities_are_honoured(image):
    never = Augment(flip_prob=0.0)
    for index in range(5):
        rng = item_rng(0, 0, index)
        np.testing.assert_array_equal(never.before_selection(image, rng), image)
    always = Augment(flip_prob=1.0, blur_prob=1.0, jpeg_prob=1.0, resize_prob=1.0)
    rng = item_rng(0, 0, 0)
    _coins, scale, sigma = rng.random(3), rng.uniform(0.5, 1.5), rng.uniform(0.1, 3.0)
    quality = int(rng.integers(30, 101))
    expected = jpeg_recompress(gaussian_blur(rescale(image, scale), sigma), quality)
    np.testing.assert_array_equal(always.before_selection(image, item_rng(0, 0, 0)), expected)
    tile = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    np.testing.assert_array_equal(always.after_selection(tile, item_rng(0, 0, 0)), tile[:, ::-1])
    with pytest.raises(ValueError, match="blur_prob=1.5"):
        Augment(blur_prob=1.5)


def test_dataset_items_are_reproducible_across_epochs_and_workers(tmp_path):
    labelled_folder(tmp_path, 3, 3)
    cfg = TrainConfig(data=str(tmp_path), seed=5, **ALL_ON)
    dataset = build_train_dataset(cfg)
    dataset.set_epoch(1)
    in_process = [dataset[i][0] for i in range(len(dataset))]
    fresh = build_train_dataset(cfg)  # a resumed run: new objects, same (seed, epoch)
    fresh.set_epoch(1)
    assert all(torch.equal(fresh[i][0], in_process[i]) for i in (0, 4))
    loader = DataLoader(fresh, batch_size=2, num_workers=2, collate_fn=collate)  # order fixed, 2 workers
    images = torch.cat([batch[0] for batch in loader])
    assert torch.equal(images, torch.stack(in_process))
    fresh.set_epoch(2)
    assert not torch.equal(fresh[0][0], in_process[0])


def test_parse_perturbations_names_and_order():
    items = parse_perturbations("jpeg:95,75,50 blur:1,2 resize:0.5")
    assert [p.name for p in items] == ["jpeg95", "jpeg75", "jpeg50", "blur1", "blur2", "resize0.5"]
    assert items[0] == Perturbation("jpeg", 95) and items[-1] == Perturbation("resize", 0.5)
    assert [p.name for p in parse_perturbations(["jpeg:75", "blur:1.5"])] == ["jpeg75", "blur1.5"]
    assert parse_perturbations(None) == [] and parse_perturbations("") == []


@pytest.mark.parametrize("spec, needle", [
    ("jpeg", "expected KIND:V1,V2"), ("noise:1", "unknown kind 'noise'"), ("jpeg:high", "'high' is not a number"),
    ("jpeg:101", "from 1 to 100"), ("jpeg:7.5", "whole number"), ("blur:0", "must be > 0"),
    ("resize:-1", "must be > 0"),
])
def test_parse_perturbations_errors(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse_perturbations(spec)


def test_perturbations_apply_deterministically(image):
    jpeg, blur, resize = parse_perturbations("jpeg:50 blur:2 resize:0.5")
    once = jpeg(image)
    np.testing.assert_array_equal(once, jpeg(image))
    assert once.shape == image.shape and 0 < np.abs(once.astype(int) - image).mean() < 20
    blurred = blur(image)
    # blur lowers the high-frequency energy: neighbour differences shrink
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < 0.5 * np.abs(np.diff(image.astype(int), axis=1)).mean()
    assert resize(image).shape == (96, 112, 3)
    assert rescale(np.zeros((1, 3, 3), np.uint8), 0.1).shape == (1, 1, 3)  # never below one pixel
