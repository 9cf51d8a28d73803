"""FolderDataset.with_deferred_selection + collate_unselected + select_patches_torch (what the trainer's
--patch-selection device runs) against the dataset's own items (the workers' numpy selection): the same
model inputs, bit for bit, under training augmentation, evaluation layouts, mixed sizes and bad files."""
import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.data import Augment
from dgsnet.data.dataset import FolderDataset, Unselected, collate, collate_unselected
from dgsnet.data.layouts import Sample
from dgsnet.data.select_device import select_patches_torch
from dgsnet.image.decode import ImageLoadError
from tests.data.test_select_device import textured

SIZES = [(224, 224), (257, 311), (100, 57), (31, 33), (400, 260), (224, 224), (513, 97)]
AUGMENT = Augment(flip_prob=0.5, blur_prob=0.5, jpeg_prob=0.5, resize_prob=0.5)


def _folder(tmp_path, sizes, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(textured(rng, h, w)).save(path, quality=90)
        samples.append(Sample(str(path), i % 2, ""))
    return samples


def _device_inputs(batch, dtype, norm="imagenet"):
    unselected = batch[0]
    assert isinstance(unselected, Unselected)
    return select_patches_torch(unselected.pixels, unselected.permutations, flips=unselected.flips,
                                entropy_dtype=dtype, normalize=norm)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("epoch", [0, 3])
def test_training_items_give_the_workers_tiles(tmp_path, dtype, epoch):
    samples = _folder(tmp_path, SIZES)
    dataset = FolderDataset(samples, ["a caption"] * len(samples), augment=AUGMENT, seed=11)
    dataset.set_epoch(epoch)
    deferred = dataset.with_deferred_selection()
    indices = list(range(len(samples)))
    want = collate([dataset[i] for i in indices])
    got = collate_unselected([deferred[i] for i in indices])
    assert isinstance(got[0].pixels, list)  # mixed sizes: one tensor per image
    assert torch.equal(_device_inputs(got, dtype), want[0])
    assert torch.equal(got[1], want[1]) and got[2:] == want[2:]
    # the draws are the item's: some tiles flipped, some not, and the layouts differ between epochs
    flips = got[0].flips.tolist()
    assert True in flips and False in flips


def test_one_size_batches_are_stacked(tmp_path):
    samples = _folder(tmp_path, [(256, 288)] * 5, seed=2)
    dataset = FolderDataset(samples, ["c"] * 5, augment=Augment(flip_prob=0.5), seed=3)
    got = collate_unselected([dataset.with_deferred_selection()[i] for i in range(5)])
    assert isinstance(got[0].pixels, torch.Tensor) and got[0].pixels.shape == (5, 256, 288, 3)
    assert torch.equal(_device_inputs(got, torch.float64), collate([dataset[i] for i in range(5)])[0])


@pytest.mark.parametrize("order", ["raster", "shuffle"])
def test_evaluation_items_give_the_same_tiles(tmp_path, order):
    samples = _folder(tmp_path, SIZES[:4], seed=4)
    dataset = FolderDataset(samples, ["c"] * 4, norm="clip", patch_order=order)
    got = collate_unselected([dataset.with_deferred_selection()[i] for i in range(4)])
    assert not got[0].flips.any()
    if order == "raster":
        assert torch.equal(got[0].permutations, torch.arange(49).expand(4, 49))
    assert torch.equal(_device_inputs(got, torch.float64, norm="clip"), collate([dataset[i] for i in range(4)])[0])


def test_an_unreadable_file_is_skipped_or_named(tmp_path):
    samples = _folder(tmp_path, [(240, 240)] * 3, seed=5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    samples.append(Sample(str(bad), 1, ""))
    deferred = FolderDataset(samples, ["c"] * 4, augment=Augment()).with_deferred_selection()
    assert deferred[3] is None and deferred.skipped == [str(bad)]
    got = collate_unselected([deferred[i] for i in range(4)])
    assert got[0].pixels.shape[0] == 3 and got[3] == [s.path for s in samples[:3]]
    assert collate_unselected([None, None]) is None
    strict = FolderDataset(samples, ["c"] * 4, augment=Augment(), strict=True).with_deferred_selection()
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        strict[3]


def test_the_clone_leaves_the_original_selecting(tmp_path):
    samples = _folder(tmp_path, [(230, 230)], seed=6)
    dataset = FolderDataset(samples, ["c"], augment=Augment())
    deferred = dataset.with_deferred_selection()
    assert dataset[0][0].shape == (3, 224, 224) and dataset[0][0].dtype == torch.float32
    assert deferred[0][0].shape == (230, 230, 3) and deferred[0][0].dtype == torch.uint8
    assert deferred.skipped is dataset.skipped  # the trainer reports skipped files from either
