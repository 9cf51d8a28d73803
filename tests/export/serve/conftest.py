"""`dgsnet serve` as a real uvicorn process on a free loopback port, with torch blocked in it, serving
the session's tiny exported detector (tests/conftest.py: fp32_export); and the files it is sent."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.image.test_torch_free import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[3]
# The server, run where torch and onnx cannot be imported: serving must never need them.
SERVE = BLOCK_TORCH + "from dgsnet_export.serve.cli import main\nsys.exit(main(sys.argv[2:]))\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def access_entries(self) -> list[dict]:
        entries = []
        for line in self.log_lines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "access":
                    entries.append(entry)
        return entries

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def running_server(model, tmp_path: Path, *flags: str, ready_timeout: float = 120):
    """Starts `dgsnet-serve MODEL --port P FLAGS`, waits until GET /readyz answers 200, stops it after."""
    import httpx

    for attempt in range(3):  # the free port may be taken between finding and binding it
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with open(log, "wb") as sink:
            process = subprocess.Popen([sys.executable, "-c", SERVE, str(ROOT / "export"), str(model), "--port",
                                        str(port), *flags], stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path)
        server = Server(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        if process.poll() is None and time.monotonic() < deadline:
            break
        if "address already in use" not in log.read_text().lower():
            server.stop()
            raise AssertionError(f"dgsnet-serve did not become ready:\n{log.read_text()[-3000:]}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serve_model(fp32_export):
    return fp32_export[0]


@pytest.fixture(scope="session")
def server(serve_model, tmp_path_factory):
    """The session's server: small limits, so each can be hit with small files."""
    with running_server(serve_model, tmp_path_factory.mktemp("serve"), "--max-batch", "8", "--max-wait-ms", "5",
                        "--max-images", "8", "--max-request-mb", "4", "--max-pixels", "4") as running:
        yield running


@pytest.fixture(scope="session")
def serve_images(photo_dir, tmp_path_factory):
    """Good files (photos, a tiny image that gets mirror-padded, a greyscale PNG, an RGBA PNG) and bad
    ones (truncated, not an image, over 4 MP, empty), by kind."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("serve-images")
    good = sorted(photo_dir.iterdir())
    rng = np.random.default_rng(5)
    tiny = folder / "tiny.png"
    Image.fromarray(np.asarray(Image.open(good[0]))[180:220, 200:257]).save(tiny)  # a face, 57x40
    rgba = folder / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (240, 260, 4), dtype=np.uint8)).save(rgba)
    good += [tiny, rgba]
    truncated = folder / "truncated.png"
    truncated.write_bytes(good[1].read_bytes()[:3000])
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    huge = folder / "huge.png"  # 2100 x 2100 = 4.41 MP of zeros: a few KB on disk
    Image.fromarray(np.zeros((2100, 2100), np.uint8)).save(huge)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    bad = {"corrupt": truncated, "unsupported": text, "too_many_pixels": huge, "empty": empty}
    return good, bad


@pytest.fixture(scope="session")
def predicted(serve_model, serve_images, tmp_path_factory):
    """dgsnet-predict's records of the good files (the real command line), by file name."""
    out = tmp_path_factory.mktemp("predict") / "preds.jsonl"
    good, _ = serve_images
    result = subprocess.run([sys.executable, "-m", "dgsnet_export.cli", str(serve_model), *map(str, good), "--out",
                             str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {Path(r["path"]).name: r for r in records}
