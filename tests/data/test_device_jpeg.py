"""JPEG decoding on the training device (--jpeg-decoder device): dgsnet.image.decode.jpeg_for_device
picks the files it can take, dgsnet.data.select_device.decode_jpegs_on decodes and turns them. On the
CPU torchvision's decoder is libjpeg-turbo, as Pillow's, so the pixels must equal load_rgb's exactly,
EXIF orientation included; refused files come back as None."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dgsnet.data.select_device import decode_jpegs_on, orient
from dgsnet.image.decode import jpeg_for_device, load_rgb
from tests.data.test_select_device import textured

ORIENTATIONS = range(1, 9)


def _jpeg(path, pixels, orientation=None, mode="RGB", quality=90):
    img = Image.fromarray(pixels)
    if mode != "RGB":
        img = img.convert(mode)
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(path, format="JPEG", quality=quality, **kwargs)
    return str(path)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("decode", ["dgsnet", "pil"])
def test_device_pixels_are_load_rgbs(tmp_path, orientation, decode):
    path = _jpeg(tmp_path / "x.jpg", textured(np.random.default_rng(orientation), 61, 97), orientation)
    data, seen = jpeg_for_device(path, decode=decode)
    assert seen == (orientation if decode == "dgsnet" else 1)
    (rgb,) = decode_jpegs_on([torch.from_numpy(data.copy())], "cpu", [seen])
    want = load_rgb(path, decode=decode)
    assert rgb.shape == want.shape  # a quarter turn swaps the sides under dgsnet's decoding
    np.testing.assert_array_equal(rgb.numpy(), want)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_orient_turns_as_pil_does(orientation):
    from PIL import ImageOps

    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    want = np.asarray(ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(orient(torch.from_numpy(pixels), orientation).numpy(), want)


def test_greyscale_jpegs_become_rgb_as_on_the_cpu(tmp_path):
    path = _jpeg(tmp_path / "g.jpg", textured(np.random.default_rng(1), 40, 50), mode="L")
    data, orientation = jpeg_for_device(path)
    (rgb,) = decode_jpegs_on([torch.from_numpy(data.copy())], "cpu", [orientation])
    np.testing.assert_array_equal(rgb.numpy(), load_rgb(path))


def test_files_the_device_cannot_take_are_left_to_the_cpu(tmp_path):
    pixels = textured(np.random.default_rng(2), 64, 64)
    png = tmp_path / "p.jpg"  # a PNG with a JPEG name
    Image.fromarray(pixels).save(png, format="PNG")
    cmyk = tmp_path / "c.jpg"
    Image.fromarray(pixels).convert("CMYK").save(cmyk, format="JPEG")
    big = _jpeg(tmp_path / "big.jpg", pixels)
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert jpeg_for_device(png) is None and jpeg_for_device(cmyk) is None and jpeg_for_device(broken) is None
    assert jpeg_for_device(tmp_path / "missing.jpg") is None
    assert jpeg_for_device(big, max_pixels=64 * 64 - 1) is None  # load_rgb refuses it, naming the limit
    assert jpeg_for_device(big, max_pixels=64 * 64) is not None


def test_a_file_the_decoder_refuses_fails_alone(tmp_path):
    good = open(_jpeg(tmp_path / "a.jpg", textured(np.random.default_rng(3), 48, 80)), "rb").read()
    truncated = good[: len(good) // 3]
    out = decode_jpegs_on([torch.frombuffer(bytearray(x), dtype=torch.uint8) for x in (good, truncated, good)], "cpu")
    assert out[1] is None
    np.testing.assert_array_equal(out[0].numpy(), load_rgb(io.BytesIO(good)))
    assert torch.equal(out[0], out[2])
