"""select_patches_torch (dgsnet.data.select_device) against its specification, the numpy
select_patches / select_patches_loop of dgsnet.image.preprocess: identical tiles on CPU tensors,
whatever the sizes, ties, entropy dtype, batch form and layout; CUDA against the CPU (gpu-marked)."""
import numpy as np
import pytest
import torch

from dgsnet.data import select_device
from dgsnet.data.select_device import (decode_jpeg_batch, normalize_torch, patch_entropy_torch, prepare_torch,
                                       select_indices_torch, select_patches_device, select_patches_torch)
from dgsnet.image.preprocess import (FAST_ENTROPY_TOL, NORMS, normalize, prepare_image, select_patches,
                                     select_patches_loop, spectral_entropy)

DTYPES = [torch.float64, torch.float32]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def textured(rng, h, w):
    """Smooth blocks plus noise of random strength: entropies spread over a wide range."""
    base = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float64)
    smooth = np.kron(base, np.ones((16, 16, 1)))[:h, :w]
    return np.clip(smooth + rng.normal(0, rng.uniform(0, 60), (h, w, 1)), 0, 255).astype(np.uint8)


def hwc(tiles):
    return [t.permute(1, 2, 0).cpu().numpy() for t in tiles]


def assert_same_as_numpy(images, out):
    assert out.shape == (len(images), 3, 224, 224) and out.dtype == torch.uint8
    for image, tile in zip(images, hwc(out)):
        np.testing.assert_array_equal(tile, select_patches(image))


def cases(seed):
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (150, 97), dtype=np.uint8)
    repeated = np.tile(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (9, 11, 1))  # all entropies tie
    half = repeated.copy()
    half[:, 160:] = textured(rng, 288, 192)  # ties among the lowest, spread among the highest
    return {
        "1x1": rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        "5x300": rng.integers(0, 256, (5, 300, 3), dtype=np.uint8),
        "31x33": textured(rng, 31, 33),
        "100x57": rng.integers(0, 256, (100, 57, 3), dtype=np.uint8),
        "224x224": textured(rng, 224, 224),
        "257x311": textured(rng, 257, 311),
        "1000x700": textured(rng, 1000, 700),
        "grey-as-rgb": np.repeat(grey[..., None], 3, axis=2),
        "constant": np.full((333, 479, 3), 77, dtype=np.uint8),
        "black": np.zeros((300, 300, 3), dtype=np.uint8),
        "repeated": repeated,
        "half-repeated": half,
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_list_of_odd_sizes_equals_numpy(dtype):
    images = list(cases(1).values())
    out = select_patches_torch([torch.from_numpy(x) for x in images], entropy_dtype=dtype)
    assert_same_as_numpy(images, out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(cases(2)))
def test_batch_of_one_equals_numpy_and_the_loop(name, dtype):
    image = cases(2)[name]
    for batch in ([torch.from_numpy(image)], torch.from_numpy(image)[None]):
        tile = hwc(select_patches_torch(batch, entropy_dtype=dtype))[0]
        np.testing.assert_array_equal(tile, select_patches(image))
    if image.size < 400_000:  # the per-patch loop is slow on the big one
        np.testing.assert_array_equal(tile, select_patches_loop(image))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h, w", [(1, 1), (31, 33), (224, 224), (257, 311)])
def test_stacked_batch_equals_list_and_numpy(h, w, dtype):
    rng = np.random.default_rng(h + w)
    images = [textured(rng, h, w), rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.full((h, w, 3), 9, np.uint8)]
    stacked = select_patches_torch(torch.from_numpy(np.stack(images)), entropy_dtype=dtype)
    listed = select_patches_torch([torch.from_numpy(x) for x in images], entropy_dtype=dtype)
    assert torch.equal(stacked, listed)
    assert_same_as_numpy(images, stacked)


@pytest.mark.parametrize("h, w", [(1, 1), (2, 5), (5, 300), (31, 33), (223, 225), (100, 57), (257, 311)])
def test_mirror_padding_and_crop_equal_numpy(h, w):
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_torch(torch.from_numpy(image)).numpy(), prepare_image(image))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, select_device.KEY_DOUBT / 100),
                                        (torch.float32, FAST_ENTROPY_TOL / 100)])
def test_patch_entropy_is_close_to_the_float64_definition(dtype, tol):
    """The bounds the selection relies on, with a 100x margin: float64 keys are doubted within
    KEY_DOUBT of a rounding half-point, float32 ranks within FAST_ENTROPY_TOL of a boundary."""
    rng = np.random.default_rng(5)
    amp = 10 ** rng.uniform(-1, 2.5, (2000, 1, 1, 1))  # from near-flat (DC dominates) to noise
    patches = np.concatenate([np.clip(128 + amp * rng.normal(0, 1, (2000, 32, 32, 3)), 0, 255).astype(np.uint8),
                              rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
                              np.full((3, 32, 32, 3), 200, np.uint8), np.zeros((1, 32, 32, 3), np.uint8),
                              textured(rng, 32 * 8, 32).reshape(8, 32, 32, 3)])
    grey = select_device._grey(torch.from_numpy(patches), dtype)
    got = patch_entropy_torch(grey)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), spectral_entropy(patches), rtol=0, atol=tol)


def test_doubtful_keys_are_recomputed_with_numpy_and_still_agree(monkeypatch):
    """KEY_DOUBT at a whole key step makes every key doubtful: the numpy re-ranking path runs for
    every image with a boundary in reach, and must give the same tiles."""
    monkeypatch.setattr(select_device, "KEY_DOUBT", 1e-9)
    images = list(cases(3).values())
    assert_same_as_numpy(images, select_patches_torch([torch.from_numpy(x) for x in images]))


def mirrored_tie_image(mirror_first):
    """64 patches: 23 of low entropy, a patch and its mirror image at raster indices 5 and 50 (the
    same power spectrum, so equal exact entropies: ranks 24 and 25, the tie goes to index 5), 39 higher."""
    rng = np.random.default_rng(21)
    amp = 10 ** rng.uniform(-0.3, 1.7, (2000, 1, 1, 1))
    pool = np.clip(128 + amp * rng.normal(0, 1, (2000, 32, 32, 3)), 0, 255).astype(np.uint8)
    order = np.argsort(spectral_entropy(pool))
    a = pool[order[1500]]
    pair = (a[:, ::-1], a) if mirror_first else (a, a[:, ::-1])
    patches = list(pool[order[100:123]]) + list(pool[order[1600:1639]])
    patches.insert(5, pair[0])
    patches.insert(50, pair[1])
    return np.ascontiguousarray(np.stack(patches).reshape(8, 8, 32, 32, 3).swapaxes(1, 2).reshape(256, 256, 3))


@pytest.mark.parametrize("mirror_first", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_an_exact_tie_at_the_boundary_goes_to_the_lower_index(mirror_first, dtype):
    """float32 entropies of the two mirrored patches differ (by ~3e-7 bits, in one of the two
    arrangements in the wrong direction): the float32 mode must re-rank in float64, where the
    rounded entropies tie and index 5 wins, as in numpy."""
    image = mirrored_tie_image(mirror_first)
    grey = select_device._grey(select_device._patches(torch.from_numpy(image)), torch.float32)
    fast = patch_entropy_torch(grey)
    assert fast[5] != fast[50]  # the premise: float32 cannot see the tie
    keep = select_indices_torch(torch.from_numpy(image)[None], entropy_dtype=dtype)[0].tolist()
    assert 5 in keep and 50 not in keep
    tile = hwc(select_patches_torch([torch.from_numpy(image)], entropy_dtype=dtype))[0]
    np.testing.assert_array_equal(tile, select_patches(image))
    np.testing.assert_array_equal(tile, select_patches_loop(image))


def test_permutations_reproduce_the_seeded_layout():
    images = [textured(np.random.default_rng(s), 161 + s, 290) for s in range(3)]
    perms = [np.random.default_rng(s).permutation(49) for s in range(2)] + [None]
    out = select_patches_torch([torch.from_numpy(x) for x in images], perms)
    for s, (image, tile) in enumerate(zip(images, hwc(out))):
        want = select_patches(image, np.random.default_rng(s)) if s < 2 else select_patches(image)
        np.testing.assert_array_equal(tile, want)
    as_tensor = select_patches_torch([torch.from_numpy(x) for x in images[:2]], torch.as_tensor(np.stack(perms[:2])))
    assert torch.equal(as_tensor, out[:2])


def test_training_draws_reproduce_the_augmented_cpu_tiles():
    """What FolderDataset.tile does for training (before_selection, select_patches(rgb, rng),
    after_selection with the same generator), rebuilt with training_draws + the device selection."""
    from dgsnet.data import Augment, item_rng

    augment = Augment(flip_prob=0.5)
    images, perms, flips, want = [], [], [], []
    for index in range(8):
        image = textured(np.random.default_rng(index), 200 + 13 * index, 260)
        rng = item_rng(3, 1, index)
        rgb = augment.before_selection(image, rng)
        want.append(augment.after_selection(select_patches(rgb, rng), rng))
        rng = item_rng(3, 1, index)
        images.append(augment.before_selection(image, rng))
        perm, flip = select_device.training_draws(rng, augment.flip_prob)
        perms.append(perm)
        flips.append(flip)
    assert 0 < sum(flips) < len(flips)  # both branches are exercised
    out = select_patches_torch([torch.from_numpy(x) for x in images], perms, flips=flips)
    for got, expected in zip(hwc(out), want):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="flips"):
        select_patches_torch([torch.from_numpy(images[0])], flips=[True, False])


@pytest.mark.parametrize("norm", ["imagenet", "clip"])
def test_normalisation_is_bit_identical_to_numpy(norm):
    images = [textured(np.random.default_rng(4), 257, 311), np.zeros((40, 40, 3), np.uint8)]
    out = select_patches_torch([torch.from_numpy(x) for x in images], normalize=norm)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 224, 224)
    from dgsnet.image.preprocess import NORMS

    for image, got in zip(images, out):
        np.testing.assert_array_equal(got.numpy(), normalize(select_patches(image), *NORMS[norm]))
    tiles = select_patches_torch([torch.from_numpy(x) for x in images])
    assert torch.equal(normalize_torch(tiles, NORMS[norm]), out)


def test_entry_point_takes_numpy_arrays_and_greyscale():
    rng = np.random.default_rng(8)
    grey = rng.integers(0, 256, (90, 250), dtype=np.uint8)
    colour = textured(rng, 300, 200)
    out = select_patches_device([grey, colour], device="cpu", norm=None)
    np.testing.assert_array_equal(hwc(out)[0], select_patches(grey))
    np.testing.assert_array_equal(hwc(out)[1], select_patches(colour))
    normed = select_patches_device([colour], device="cpu")
    np.testing.assert_array_equal(normed[0].numpy(), normalize(select_patches(colour)))


def test_indices_are_sorted_raster_indices():
    image = textured(np.random.default_rng(9), 257, 311)
    keep = select_indices_torch(torch.from_numpy(image)[None])
    assert keep.shape == (1, 49) and bool((keep[0, 1:] > keep[0, :-1]).all())
    assert int(keep.max()) < (257 // 32) * (311 // 32)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="uint8"):
        select_patches_torch(torch.zeros(1, 40, 40, 3))
    with pytest.raises(ValueError, match="expanded to RGB"):
        select_patches_torch([torch.zeros(40, 40, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="no pixels"):
        select_patches_torch([torch.zeros(0, 40, 3, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty batch"):
        select_patches_torch([])
    with pytest.raises(ValueError, match="float64 or torch.float32"):
        select_patches_torch([torch.zeros(40, 40, 3, dtype=torch.uint8)], entropy_dtype=torch.float16)
    with pytest.raises(ValueError, match="permutations"):
        select_patches_torch([torch.zeros(40, 40, 3, dtype=torch.uint8)], [np.zeros(49, dtype=int)])
    with pytest.raises(ValueError, match="choose one of"):
        select_patches_torch([torch.zeros(40, 40, 3, dtype=torch.uint8)], normalize="nope")


def test_decode_falls_back_to_the_cpu_decoder():
    import io

    from PIL import Image

    from dgsnet.image.decode import load_rgb

    buffer = io.BytesIO()
    Image.fromarray(textured(np.random.default_rng(1), 70, 90)).save(buffer, format="JPEG", quality=90)
    (got,) = decode_jpeg_batch([buffer.getvalue()], device="cpu")
    np.testing.assert_array_equal(got.numpy(), load_rgb(buffer.getvalue()))


# ------------------------------------------------------------------------------ no reads from the device

# Tensor functions whose result the host must read on CUDA (a scalar, or a data-dependent output size)
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
          "masked_select", "unique", "unique_consecutive"}


class _HostReads(torch.overrides.TorchFunctionMode):
    """Records every torch function that, on a CUDA tensor, would wait for the device to read a value
    back: .item()/bool()/.tolist(), nonzero, masked_select, unique, boolean-mask indexing (get or set),
    repeat_interleave without output_size. Only tensors on the compute side count: the test passes
    host data (permutations, flips) as host tensors, which are read on the host by design."""

    def __init__(self, host_inputs=()):
        super().__init__()
        self.host = {id(t) for t in host_inputs}
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        on_device = not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host)
        if name in _READS and on_device:
            self.reads.append(name)
        elif name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in index):
                self.reads.append(f"{name} (boolean mask)")
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            self.reads.append(name)
        return func(*args, **kwargs)


def test_the_read_detector_sees_reads():
    """The check below could fail: the mode records a scalar read, a boolean mask and nonzero, and
    leaves the host inputs it was given alone."""
    t, host = torch.arange(5.0), torch.arange(3)
    with _HostReads(host_inputs=(host,)) as mode:
        t.sum().item()
        t[t > 2]
        torch.nonzero(t)
        host.tolist()
    assert mode.reads == ["item", "__getitem__ (boolean mask)", "nonzero"]


def _training_like_batch(seed, mixed):
    rng = np.random.default_rng(seed)
    images = list(cases(seed).values()) if mixed else [textured(rng, 300, 260) for _ in range(4)]
    seeds = [100 + i for i in range(len(images))]  # select_patches(image, seed) draws this permutation
    perms = torch.as_tensor(np.stack([np.random.default_rng(s).permutation(49) for s in seeds]))
    flips = torch.tensor([i % 2 == 0 for i in range(len(images))])
    tensors = [torch.from_numpy(x) for x in images]
    return images, (tensors if mixed else torch.stack(tensors)), perms, flips, seeds


@pytest.mark.parametrize("mixed", [False, True], ids=["stacked", "mixed-sizes"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_queued_selection_reads_nothing_back(mixed, dtype):
    """select_patches_queued (the trainer's per-step call) runs no op that needs a device value on the
    host; resolve() (one batch later in the trainer) then gives exactly the numpy tiles."""
    images, batch, perms, flips, seeds = _training_like_batch(7, mixed)
    with _HostReads(host_inputs=(perms, flips)) as mode:
        pending = select_device.select_patches_queued(batch, perms, flips=flips, entropy_dtype=dtype,
                                                      normalize="clip")
    assert mode.reads == []
    got = pending.resolve()
    assert got.dtype == torch.float32 and got.shape == (len(images), 3, 224, 224)
    for image, seed, flip, tile in zip(images, seeds, flips.tolist(), got):
        want = select_patches(image, seed)
        want = np.ascontiguousarray(want[:, ::-1] if flip else want)
        np.testing.assert_array_equal(tile.numpy(), normalize(want, *NORMS["clip"]))


@pytest.mark.parametrize("mixed", [False, True], ids=["stacked", "mixed-sizes"])
def test_queued_selection_runs_on_the_meta_device(mixed):
    """On the meta device (shapes without data) any read of a value raises: staging a whole batch
    there proves the per-step path never needs one (resolve(), one batch later, reads the flags)."""
    _, batch, perms, flips, _ = _training_like_batch(8, mixed)
    meta = batch.to("meta") if isinstance(batch, torch.Tensor) else [x.to("meta") for x in batch]
    pending = select_device.select_patches_queued(meta, perms, flips=flips, entropy_dtype=torch.float64,
                                                  normalize="imagenet")
    assert pending.tiles.device.type == "meta" and pending.tiles.shape == (len(perms), 3, 224, 224)
    with pytest.raises((NotImplementedError, RuntimeError)):  # the check itself detects a read
        pending.tiles.sum().item()


def test_doubtful_images_are_rebuilt_at_resolve(monkeypatch):
    """Every key doubtful: resolve() re-ranks the suspect images on the host and rebuilds the tiles."""
    monkeypatch.setattr(select_device, "KEY_DOUBT", 1e-9)
    images = list(cases(3).values())
    pending = select_device.select_patches_queued([torch.from_numpy(x) for x in images])
    assert_same_as_numpy(images, pending.resolve())
    assert pending.rebuilt and pending.resolve() is pending.tiles  # resolving again changes nothing


# ------------------------------------------------------------------------------ CUDA

@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_tiles_equal_the_cpu_ones(dtype):
    images = list(cases(6).values())
    cpu = select_patches_torch([torch.from_numpy(x) for x in images])
    cuda = select_patches_torch([torch.from_numpy(x).cuda() for x in images], entropy_dtype=dtype)
    assert cuda.is_cuda and torch.equal(cuda.cpu(), cpu)
    stacked = torch.from_numpy(np.stack([textured(np.random.default_rng(s), 512, 512) for s in range(5)]))
    assert torch.equal(select_patches_torch(stacked.cuda(), entropy_dtype=dtype).cpu(), select_patches_torch(stacked))


@needs_cuda
@pytest.mark.gpu
def test_cuda_normalisation_and_entry_point_match_the_cpu():
    images = [textured(np.random.default_rng(2), 257, 311), np.full((50, 60, 3), 3, np.uint8)]
    cuda = select_patches_device(images, device="cuda").cpu()
    cpu = select_patches_device(images, device="cpu")
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-6)  # FMA on the GPU may round differently


@needs_cuda
@pytest.mark.gpu
def test_cuda_jpeg_decoding_is_close_to_libjpeg():
    import io

    from PIL import Image

    from dgsnet.image.decode import load_rgb

    image = textured(np.random.default_rng(3), 300, 200)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    (got,) = decode_jpeg_batch([buffer.getvalue()], device="cuda")
    assert got.is_cuda and got.shape == (300, 200, 3) and got.dtype == torch.uint8
    diff = np.abs(got.cpu().numpy().astype(int) - load_rgb(buffer.getvalue()).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8  # nvjpeg's IDCT/upsampling differ from libjpeg by a few levels


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mixed", [False, True], ids=["stacked", "mixed-sizes"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_queued_selection_does_not_synchronise(mixed, dtype):
    """torch.cuda's sync debug mode raises on any synchronising call: queueing a batch makes none;
    resolve() (an event wait on the flags' pinned copy) then gives the CPU's tiles."""
    images, batch, perms, flips, _ = _training_like_batch(9, mixed)
    on_gpu = batch.cuda() if isinstance(batch, torch.Tensor) else [x.cuda() for x in batch]
    select_device.select_patches_queued(on_gpu, perms, flips=flips, normalize="clip").resolve()  # warm caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = select_device.select_patches_queued(on_gpu, perms, flips=flips, entropy_dtype=dtype,
                                                      normalize="clip")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = select_patches_torch(batch, perms, flips=flips, normalize="clip")
    assert torch.equal(pending.resolve().cpu(), want)
