"""patch_selection (which patches select_patches keeps, split low / high) against the definition's loop."""
import numpy as np
import pytest
import skimage.data

from dgsnet.image.preprocess import (N_HIGH, N_LOW, PATCH, RANK_DECIMALS, gather_patches, patch_selection,
                                     prepare_image, select_patches, spectral_entropy, tile_patches)


def oracle(image):
    """Step 5 of docs/method.md#4-patch-selection, one patch at a time: (low, high) raster indices."""
    prepared = prepare_image(image)
    rows, cols = prepared.shape[0] // PATCH, prepared.shape[1] // PATCH
    keys = [round(float(spectral_entropy(prepared[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH])),
                  RANK_DECIMALS) for r in range(rows) for c in range(cols)]
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    return sorted(order[:N_LOW]), sorted(order[len(order) - N_HIGH:]), rows, cols


def images():
    astronaut = skimage.data.astronaut()
    rng = np.random.default_rng(3)
    yield "photo", astronaut
    yield "odd crop", astronaut[:257, :311]
    yield "tiny, padded", astronaut[100:117, 200:223]
    yield "grey", skimage.data.camera()[:300, :200]
    flat = np.full((256, 256, 3), 77, np.uint8)  # every entropy ties: ranks by raster index
    flat[:64, :64] = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    yield "ties", flat


@pytest.mark.parametrize("name,image", list(images()), ids=[n for n, _ in images()])
def test_patch_selection_is_the_definitions_split_and_tiles_like_select_patches(name, image):
    chosen = patch_selection(image)
    low, high, rows, cols = oracle(image)
    assert (list(chosen.low), list(chosen.high), chosen.rows, chosen.cols) == (low, high, rows, cols)
    assert chosen.padded == (name == "tiny, padded")
    tile = tile_patches(gather_patches(prepare_image(image), np.array(chosen.kept())))
    np.testing.assert_array_equal(tile, select_patches(image))
