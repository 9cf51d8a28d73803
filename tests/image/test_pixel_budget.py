"""Memory bounded over a pool of decoders: the shared pixel budget (threads), its static split
(DataLoader worker processes), JPEG draft mode for files over the bomb limit, the settings."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from dgsnet.image import decode
from dgsnet.data import FolderDataset, ImageLoadError, Sample
from dgsnet.image.decode import (PIXEL_BUDGET_ENV, PixelBudget, PixelBudgetError, decoded, default_pixel_budget,
                            load_rgb, parse_pixel_budget, resolve_pixel_budget, worker_share)
from dgsnet.data.dataset import collate


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch):
    # the machine's own budget setting or a launcher's process count must not change these tests
    monkeypatch.delenv(PIXEL_BUDGET_ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def png(path, width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def photo_jpeg(path, width, height, quality=90):
    """A smooth gradient with texture: JPEG-like content whose reduced decodes differ from plain subsampling."""
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)),
                       ((xx // 7 + yy // 5) % 2) * 120 + 60], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=quality)
    return str(path)


# ---------------------------------------------------------------- threads share one budget

def test_concurrent_reservations_never_exceed_the_total_and_pixels_are_unchanged(tmp_path):
    paths = [png(tmp_path / f"{i}.png", 100, 100, seed=i) for i in range(12)]  # 10,000 pixels each
    budget = PixelBudget(25_000)  # room for two at a time
    lock, held, most = threading.Lock(), [0], [0]

    def work(path):
        with decoded(path, budget=budget) as rgb:
            with lock:
                held[0] += rgb.shape[0] * rgb.shape[1]
                most[0] = max(most[0], held[0])
            time.sleep(0.02)  # hold it, so that without the budget all 6 threads would overlap
            with lock:
                held[0] -= rgb.shape[0] * rgb.shape[1]
            return rgb.copy()

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(work, p) for p in paths]
        results = [f.result(timeout=60) for f in futures]
    assert most[0] <= 25_000 and budget.peak <= 25_000
    assert budget.peak == 20_000  # two did run at once: the budget limits, it does not serialise
    assert budget.in_use == 0
    for path, rgb in zip(paths, results):
        assert np.array_equal(rgb, load_rgb(path))  # a budget changes when, never what, is decoded


def test_an_image_larger_than_the_whole_budget_is_refused_naming_the_file_and_the_fix(tmp_path):
    path = png(tmp_path / "huge_one.png", 200, 150)
    budget = PixelBudget(10_000, "pixel_budget=0.01")
    with pytest.raises(ImageLoadError) as caught:
        with decoded(path, budget=budget):
            pass
    message = str(caught.value)
    assert caught.value.path == path and "huge_one.png" in message
    assert "200x150 = 30000 pixels" in message and "pixel budget of 10000" in message
    assert PIXEL_BUDGET_ENV in message and "\n" not in message
    assert "fewer workers" not in message  # threads share it: fewer would not make the image fit
    assert budget.in_use == 0


def test_an_image_that_does_not_fit_waits_for_the_pixels_and_then_decodes(tmp_path):
    path = png(tmp_path / "waits.png", 100, 100)  # 10,000 pixels
    budget = PixelBudget(15_000)

    def late():
        with decoded(path, budget=budget) as rgb:
            return rgb.shape

    pool = ThreadPoolExecutor(1)
    try:
        with budget.reserve(8_000, "holder"):  # leaves 7,000: not enough
            future = pool.submit(late)
            time.sleep(0.3)
            assert not future.done() and budget.in_use == 8_000  # waiting, nothing taken yet
        assert future.result(timeout=30) == (100, 100, 3)  # the pixels came back: it went on
        assert budget.in_use == 0 and budget.peak == 10_000
    finally:
        pool.shutdown(wait=False)  # a decode stuck for good must fail the test, not hang it


def test_first_come_first_served_a_large_image_is_not_starved_by_small_ones():
    budget = PixelBudget(10_000)
    order, events = [], {}

    def take(name, pixels):
        with budget.reserve(pixels, name):
            order.append(name)
            events[name].wait(30)

    for name in ("holder", "large", "small"):
        events[name] = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        try:
            futures = [pool.submit(take, "holder", 6_000)]
            time.sleep(0.1)
            futures.append(pool.submit(take, "large", 8_000))  # waits: 4,000 free
            time.sleep(0.1)
            futures.append(pool.submit(take, "small", 2_000))  # would fit, but "large" came first
            time.sleep(0.3)
            assert order == ["holder"]
            events["holder"].set()
            time.sleep(0.3)
            assert order == ["holder", "large", "small"]  # 8,000 + 2,000 fit together once freed
        finally:  # let every thread finish, pass or fail
            for event in events.values():
                event.set()
        for f in futures:
            f.result(timeout=30)
    assert budget.in_use == 0 and budget.peak == 10_000


def test_many_threads_with_random_sizes_finish_and_give_everything_back():
    budget = PixelBudget(1_000)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 1_001, 300).tolist()  # some take the whole budget

    def take(pixels):
        with budget.reserve(pixels, "x"):
            assert budget.in_use <= budget.total
            time.sleep(0.0005)
        return pixels

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(take, s) for s in sizes]
        assert sum(f.result(timeout=60) for f in futures) == sum(sizes)  # no deadlock, none lost
    assert budget.in_use == 0 and budget.peak <= 1_000


def test_an_error_inside_the_block_gives_the_pixels_back(tmp_path):
    path = png(tmp_path / "a.png", 50, 40)
    budget = PixelBudget(5_000)
    with pytest.raises(RuntimeError, match="preprocessing failed"):
        with decoded(path, budget=budget):
            assert budget.in_use == 2_000
            raise RuntimeError("preprocessing failed")
    assert budget.in_use == 0
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(open(path, "rb").read()[:-60])
    with pytest.raises(ImageLoadError, match="corrupt.png"):
        load_rgb(str(corrupt), budget=budget)
    assert budget.in_use == 0


# ---------------------------------------------------------------- DataLoader worker processes

def folder_dataset(paths, **kwargs):
    return FolderDataset([Sample(p, 0, "") for p in paths], ["a picture"] * len(paths), **kwargs)


def test_worker_share_splits_over_workers_and_local_processes(monkeypatch):
    assert worker_share(1_000, 4) == 250
    assert worker_share(1_000, 0) == 1_000  # the main process decodes alone
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine, 4 workers each
    assert worker_share(1_000, 4) == 125


@pytest.mark.parametrize("workers", [0, 2])
def test_the_budget_is_split_statically_over_dataloader_workers(tmp_path, workers):
    big = png(tmp_path / "big.png", 300, 300)  # 90,000 pixels
    small = png(tmp_path / "small.png", 200, 200, seed=1)  # 40,000 pixels
    data = folder_dataset([big, small], pixel_budget=0.12)  # 120,000 pixels in all
    loader = DataLoader(data, batch_size=2, num_workers=workers, collate_fn=collate)
    (batch,) = list(loader)
    if workers == 0:  # the whole budget for one process: both fit
        assert batch[3] == [big, small]
    else:  # 60,000 a worker: the big image is unreadable there, the small one is not
        assert batch[3] == [small]
    strict = folder_dataset([big, small], pixel_budget=0.12, strict=True)
    if workers:
        try:
            list(DataLoader(strict, batch_size=2, num_workers=workers, collate_fn=collate))
        except ImageLoadError as exc:
            exc.__traceback__ = None  # frees the loader now: its workers stop here, not at a later gc
            error = exc
        else:
            pytest.fail("no ImageLoadError")
        assert error.path == big
        message = str(error)
        assert "pixel budget of 60000" in message and "split over 2 DataLoader worker(s)" in message
        assert "use fewer workers" in message  # a worker's share: fewer workers get more each


def test_the_split_leaves_scores_of_readable_images_identical(tmp_path):
    paths = [png(tmp_path / f"{i}.png", 240, 230, seed=i) for i in range(4)]
    alone = [item[0] for item in folder_dataset(paths, pixel_budget="off")]
    data = folder_dataset(paths, pixel_budget=1)
    pooled = [item for batch in DataLoader(data, batch_size=1, num_workers=2, collate_fn=collate)
              for item in batch[0]]
    assert len(pooled) == 4 and all((a == b).all() for a, b in zip(alone, pooled))


# ---------------------------------------------------------------- JPEG draft mode

def test_a_jpeg_over_the_limit_decodes_reduced_only_with_jpeg_draft(tmp_path):
    path = photo_jpeg(tmp_path / "large.jpg", 1001, 801)  # 801,801 pixels
    with pytest.raises(ImageLoadError, match="large.jpg.*decompression-bomb limit.*jpeg_draft=True"):
        load_rgb(path, max_pixels=300_000)
    reduced = []
    rgb = load_rgb(path, max_pixels=300_000, jpeg_draft=True, on_reduce=lambda *a: reduced.append(a))
    assert rgb.shape == (401, 501, 3)  # 1/2 scale, rounded up, within the limit
    assert rgb.shape[0] * rgb.shape[1] <= 300_000
    assert reduced == [(path, (1001, 801), (501, 401))]
    # libjpeg's DCT scaling, not a resize of the full decode
    with Image.open(path) as img:
        img.draft("RGB", (500, 400))
        assert np.array_equal(rgb, np.asarray(img.convert("RGB")))
    assert load_rgb(path, max_pixels=100_000, jpeg_draft=True).shape == (201, 251, 3)  # 1/4: 1/2 is too big
    with pytest.raises(ImageLoadError, match="decompression-bomb limit of 10000"):
        load_rgb(path, max_pixels=10_000, jpeg_draft=True)  # even 1/8 (126 x 101) is over


def test_a_jpeg_under_the_limit_decodes_exactly_as_before(tmp_path):
    path = photo_jpeg(tmp_path / "small.jpg", 640, 480)
    full = load_rgb(path)
    assert full.shape == (480, 640, 3)
    assert np.array_equal(load_rgb(path, jpeg_draft=True), full)
    assert np.array_equal(load_rgb(path, max_pixels=640 * 480, jpeg_draft=True), full)  # at the limit: full
    with Image.open(path) as img:
        assert np.array_equal(full, np.asarray(img.convert("RGB")))


def test_draft_depends_on_the_bomb_limit_only_not_on_the_budget_or_workers(tmp_path):
    path = photo_jpeg(tmp_path / "large.jpg", 1000, 800)
    plain = load_rgb(path, max_pixels=300_000, jpeg_draft=True)
    assert np.array_equal(plain, load_rgb(path, max_pixels=300_000, jpeg_draft=True, budget=PixelBudget(10**9)))
    data = FolderDataset([Sample(path, 1, "")], ["x"], max_pixels=300_000, jpeg_draft=True, pixel_budget=10)
    (batch,) = list(DataLoader(data, batch_size=1, num_workers=2, collate_fn=collate))
    assert (batch[0][0] == data[0][0]).all() and data.reduced == [path]


def test_a_png_over_the_limit_is_refused_even_with_jpeg_draft(tmp_path):
    path = png(tmp_path / "large.png", 600, 600)
    with pytest.raises(ImageLoadError, match="large.png.*decompression-bomb limit of 100000") as caught:
        load_rgb(path, max_pixels=100_000, jpeg_draft=True)
    assert "jpeg_draft" not in str(caught.value)


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("value", ["abc", "-3", "0", "nan", "inf", "1e-9", "12MP", "none"])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch, tmp_path, value):
    monkeypatch.setenv(PIXEL_BUDGET_ENV, value)
    with pytest.raises(PixelBudgetError) as caught:
        resolve_pixel_budget()
    assert f"{PIXEL_BUDGET_ENV}={value!r}" in str(caught.value) and "megapixels" in str(caught.value)
    with pytest.raises(PixelBudgetError):  # at construction, in the main process, before any worker
        folder_dataset([png(tmp_path / "a.png", 10, 10)])


def test_good_values_and_their_order(monkeypatch):
    assert parse_pixel_budget("250") == 250_000_000 and parse_pixel_budget(12.5) == 12_500_000
    assert parse_pixel_budget("off") is None
    monkeypatch.setenv(PIXEL_BUDGET_ENV, " 400 ")
    assert resolve_pixel_budget()[0] == 400_000_000
    assert resolve_pixel_budget(50)[0] == 50_000_000  # the caller's value wins over the environment
    assert PixelBudget.for_pool(None, workers=4).total == 400_000_000
    monkeypatch.setenv(PIXEL_BUDGET_ENV, "off")
    assert PixelBudget.for_pool(None, workers=4) is None
    with pytest.raises(PixelBudgetError, match="pixel_budget='many'"):
        resolve_pixel_budget("many")


def test_the_default_is_a_share_of_memory_and_never_more_than_the_pool_can_use():
    memory = decode.machine_memory()
    assert memory and memory > 0
    default = default_pixel_budget()
    assert default == int(memory * decode.MEMORY_FRACTION) // decode.BYTES_PER_PIXEL
    assert default * decode.BYTES_PER_PIXEL <= memory / 2  # well under the machine's memory
    assert default_pixel_budget(workers=2, max_pixels=1_000) == 2_000
    assert resolve_pixel_budget(workers=2, max_pixels=1_000)[0] == 2_000
