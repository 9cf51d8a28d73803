"""Robust decoding: every bad-input kind is a one-line ImageLoadError naming the file; odd modes decode right."""
import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dgsnet.data import FolderDataset, ImageLoadError, Sample, load_rgb
from dgsnet.data.dataset import collate


def save(img, path, fmt=None, **kwargs):
    img.save(path, format=fmt, **kwargs)
    return path


def png_header_only(path, width, height):
    """A PNG whose header claims width x height and that has no pixel data (a bomb's cheap stand-in)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


# ------------------------------------------------------------------ bad files

def truncated_jpeg(tmp_path, rgb):
    data = io.BytesIO()
    Image.fromarray(rgb).resize((300, 200)).save(data, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    return path


def truncated_png(tmp_path, rgb):
    data = io.BytesIO()
    Image.fromarray(rgb).save(data, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[:-40])
    return path


def garbage(tmp_path, rgb):
    path = tmp_path / "garbage.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return path


def empty(tmp_path, rgb):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    return path


def missing(tmp_path, rgb):
    return tmp_path / "missing.png"


def bomb(tmp_path, rgb):
    return png_header_only(tmp_path / "bomb.png", 20_000, 20_000)  # 400 MP > the 100 MP default


@pytest.mark.parametrize("make, reason", [
    (truncated_jpeg, "cannot decode pixels"), (truncated_png, "cannot decode pixels"),
    (garbage, "not an image format"), (empty, "not an image format"), (missing, "does not exist"),
    (bomb, "decompression-bomb limit"),
])
def test_bad_files_raise_one_line_error_naming_the_file(tmp_path, rgb, make, reason):
    path = make(tmp_path, rgb)
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path)
    message = str(info.value)
    assert message.startswith(str(path)) and reason in message and "\n" not in message
    assert info.value.path == str(path)


def test_bomb_limit_is_configurable(tmp_path, rgb):
    path = save(Image.fromarray(rgb), tmp_path / "small.png")
    with pytest.raises(ImageLoadError, match="600 pixels exceeds the decompression-bomb limit of 599"):
        load_rgb(path, max_pixels=599)
    np.testing.assert_array_equal(load_rgb(path, max_pixels=600), rgb)


# ------------------------------------------------------------------ colour modes

def test_rgb_png_round_trips_and_bytes_input(tmp_path, rgb):
    path = save(Image.fromarray(rgb), tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb(path), rgb)
    np.testing.assert_array_equal(load_rgb(path.read_bytes()), rgb)


def test_greyscale_and_bilevel_are_replicated(tmp_path, rgb):
    grey = rgb[..., 0]
    out = load_rgb(save(Image.fromarray(grey), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    bits = grey > 127
    out = load_rgb(save(Image.fromarray(bits), tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))


def test_palette_with_and_without_transparency(tmp_path):
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    out = load_rgb(save(img, tmp_path / "p.png"))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 50] and out[1, 0].tolist() == [0, 255, 0]
    img.info["transparency"] = 1
    out = load_rgb(save(img, tmp_path / "pt.png", transparency=1))
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [10, 20, 30]  # transparent -> white


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 40, 0, 255], [200, 40, 0, 0], [200, 40, 0, 128]]], dtype=np.uint8)
    out = load_rgb(save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png"))
    a = 128 / 255
    expected = np.rint(np.array([200, 40, 0]) * a + 255 * (1 - a))
    assert out[0, 0].tolist() == [200, 40, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == expected.astype(int).tolist()


def test_cmyk(tmp_path):
    cmyk = np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    out = load_rgb(save(Image.fromarray(cmyk, mode="CMYK"), tmp_path / "c.tif"))
    assert out[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255]]
    jpeg = load_rgb(save(Image.fromarray(np.repeat(np.repeat(cmyk, 16, 0), 16, 1), mode="CMYK"),
                         tmp_path / "c.jpg", quality=95))
    assert jpeg.shape == (16, 48, 3) and abs(int(jpeg[8, 8, 0]) - 0) < 12 and jpeg[8, 40].min() > 240


def test_16_bit_keeps_the_high_byte(tmp_path):
    values = np.array([[0x1234, 0xFFFF, 0x00FF]], dtype=np.uint16)
    out = load_rgb(save(Image.fromarray(values), tmp_path / "16.png"))
    assert out[0, :, 0].tolist() == [0x12, 0xFF, 0x00] and (out[..., 0] == out[..., 2]).all()


def test_48_bit_rgb_png_keeps_the_high_byte(tmp_path):
    # Pillow cannot write 16-bit RGB: build the PNG by hand (colour type 2, bit depth 16, big-endian samples).
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = np.array([[[0x1234, 0xABCD, 0x00FF], [0xFFFF, 0x0100, 0x8000]]], dtype=">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)
    path = tmp_path / "48.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert load_rgb(path).tolist() == [[[0x12, 0xAB, 0x00], [0xFF, 0x01, 0x80]]]


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = save(Image.fromarray(rgb), tmp_path / "o.png", exif=exif.tobytes())
    out = load_rgb(path)
    assert out.shape == (30, 20, 3)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_rgb(path)[0, 0].tolist() == [255, 0, 0]


# ------------------------------------------------------------------ datasets skip or stop

def test_dataset_skips_bad_files_and_names_them(tmp_path, rgb, caplog):
    good = save(Image.fromarray(rgb), tmp_path / "good.png")
    bad = truncated_jpeg(tmp_path, rgb)
    samples = [Sample(str(good), 0, ""), Sample(str(bad), 1, ""), Sample(str(good), 1, "")]
    dataset = FolderDataset(samples, ["a", "b", "c"])
    with caplog.at_level(logging.WARNING, logger="dgsnet.data"):
        items = [dataset[i] for i in range(3)]
    assert items[1] is None and dataset.skipped == [str(bad)]
    assert any(str(bad) in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    images, labels, captions, paths = collate(items)
    assert images.shape == (2, 3, 224, 224) and captions == ["a", "c"] and labels.tolist() == [0.0, 1.0]


def test_strict_dataset_raises_naming_the_file(tmp_path, rgb):
    bad = garbage(tmp_path, rgb)
    dataset = FolderDataset([Sample(str(bad), 0, "")], ["a"], strict=True)
    with pytest.raises(ImageLoadError, match=str(bad)):
        dataset[0]
