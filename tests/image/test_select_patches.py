"""select_patches against a per-patch loop of docs/method.md#4-patch-selection, written here independently."""
import numpy as np
import pytest

from dgsnet.image import preprocess
from dgsnet.data import select_patches
from dgsnet.image.preprocess import FAST_ENTROPY_TOL, fast_entropy, prepare_image, spectral_entropy


def entropy_of_patch(patch):
    """The definition for one 32x32x3 uint8 patch, in float64, rounded for ranking."""
    rgb = patch.astype(np.float64)
    grey = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
    power = np.abs(np.fft.fft2(grey)) ** 2
    p = power / (power.sum() + 1e-12)
    return round(float(-np.sum(p * np.log2(p + 1e-12))), 9)  # ranked at 9 decimals: float noise is a tie


def oracle(image, permutation=None):
    """Pad short sides to 224 (symmetric) when there are < 49 patches, crop top-left to a multiple of 32,
    keep the 24 lowest and 25 highest entropies (ties by raster index), tile in raster order."""
    h, w = image.shape[:2]
    if (h // 32) * (w // 32) < 49:
        image = np.pad(image, ((0, max(0, 224 - h)), (0, max(0, 224 - w)), (0, 0)), mode="symmetric")
    patches, scores = [], []
    for top in range(0, image.shape[0] // 32 * 32, 32):
        for left in range(0, image.shape[1] // 32 * 32, 32):
            patches.append(image[top:top + 32, left:left + 32])
            scores.append(entropy_of_patch(patches[-1]))
    ranked = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    keep = sorted(ranked[:24] + ranked[-25:])
    if permutation is not None:
        keep = [keep[j] for j in permutation]
    rows = [np.concatenate([patches[keep[r * 7 + c]] for c in range(7)], axis=1) for r in range(7)]
    return np.concatenate(rows, axis=0)


def textured(rng, h, w):
    """Random smooth + noisy regions, so entropies spread over a wide range."""
    base = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float64)
    smooth = np.kron(base, np.ones((16, 16, 1)))[:h, :w]
    noise = rng.normal(0, rng.uniform(0, 60), (h, w, 1))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


SIZES = [(1, 1), (5, 300), (31, 33), (100, 57), (223, 225), (224, 224), (225, 97), (257, 321), (333, 479)]


@pytest.mark.parametrize("h, w", SIZES)
def test_equals_per_patch_definition(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    for image in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), textured(rng, h, w)):
        out = select_patches(image)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, oracle(image))
        np.testing.assert_array_equal(preprocess.select_patches_loop(image), out)


def test_shuffled_layout_is_the_seeded_permutation_of_the_selection():
    image = np.random.default_rng(7).integers(0, 256, (161, 290, 3), dtype=np.uint8)
    permutation = np.random.default_rng(11).permutation(49)
    np.testing.assert_array_equal(select_patches(image, rng=np.random.default_rng(11)), oracle(image, permutation))
    np.testing.assert_array_equal(select_patches(image, rng=11), select_patches(image, rng=11))


def test_exact_ties_rank_by_raster_index():
    # 3 distinct patches repeated: every entropy value is shared by many patches.
    rng = np.random.default_rng(3)
    tiles = [np.full((32, 32, 3), 90, np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
             np.clip(np.arange(32)[:, None, None] * 8 + np.zeros((32, 32, 3)), 0, 255).astype(np.uint8)]
    choice = rng.integers(0, 3, (9, 11))
    image = np.concatenate([np.concatenate([tiles[c] for c in row], axis=1) for row in choice], axis=0)
    np.testing.assert_array_equal(select_patches(image), oracle(image))


def test_near_ties_are_rescored_exactly():
    # Patches whose entropies differ by far less than the float32 tolerance: one random patch with
    # single grey levels nudged, so the fast pass must fall back to the float64 definition.
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    patches = []
    for k in range(8 * 9):
        patch = base.copy()
        patch[k // 32, k % 32, 1] ^= 1  # one least-significant bit
        patches.append(patch if k % 3 else np.full_like(base, k))
    image = np.concatenate([np.concatenate(patches[r * 9:(r + 1) * 9], axis=1) for r in range(8)], axis=0)
    fast = fast_entropy(prepare_image(image))
    assert np.sort(fast)[-26] - np.sort(fast)[-25] > -FAST_ENTROPY_TOL  # the boundary is in doubt
    np.testing.assert_array_equal(select_patches(image), oracle(image))


def test_fast_entropy_error_bound_has_100x_margin():
    rng = np.random.default_rng(9)
    kinds = [rng.integers(0, 256, (32, 32, 3)),  # white noise (entropy near the maximum)
             np.full((32, 32, 3), 255), np.zeros((32, 32, 3)),  # constant (entropy ~ 0)
             np.indices((32, 32)).sum(0)[..., None].repeat(3, 2) % 2 * 255,  # checkerboard: one frequency
             200 + rng.integers(0, 2, (32, 32, 3)),  # near constant: tiny AC power
             np.linspace(0, 255, 32)[None, :, None].repeat(32, 0).repeat(3, 2)]  # ramp
    patches = np.stack([k.astype(np.uint8) for k in kinds for _ in range(1)] +
                       [textured(rng, 32, 32) for _ in range(40)])
    image = np.concatenate(list(patches), axis=1)  # one row of patches
    error = np.abs(fast_entropy(image) - spectral_entropy(patches))
    assert error.max() < FAST_ENTROPY_TOL / 100


def test_pil_and_greyscale_inputs():
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(select_patches(Image.fromarray(rgb)), select_patches(rgb))
    grey = rgb[..., 0]
    np.testing.assert_array_equal(select_patches(grey), select_patches(np.repeat(grey[..., None], 3, 2)))


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10, 4), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "no pixels"),
    ("image.png", "numpy array or a PIL image"),
])
def test_bad_arrays_have_clear_errors(bad, needle):
    with pytest.raises(ValueError, match=needle):
        select_patches(bad)


def test_mirror_padded_small_images_many_sizes():
    # Padding mirrors the image, so many padded patches tie exactly: the tie rule must hold.
    rng = np.random.default_rng(21)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 224, 2))
        image = textured(rng, h, w) if rng.random() < 0.5 else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(select_patches(image), oracle(image), err_msg=f"{h}x{w}")


def test_all_tied_entropies_are_rescored_in_bounded_batches(monkeypatch):
    """A flat image ties every entropy: all patches are re-scored exactly, in chunks, same result."""
    from dgsnet.image import preprocess

    monkeypatch.setattr(preprocess, "_EXACT_CHUNK", 7)
    flat = np.full((610, 700, 3), 128, dtype=np.uint8)
    flat[300:340, 100:180] = 20  # a few distinct patches among the ties
    np.testing.assert_array_equal(preprocess.select_patches(flat), preprocess.select_patches_loop(flat))
