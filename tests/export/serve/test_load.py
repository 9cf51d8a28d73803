"""A bounded load test: 400 requests from 16 concurrent clients on loopback, bad images mixed in.

Every good image must come back scored exactly as dgsnet-predict scores the same file, every bad one
with its 4xx, no request with a 5xx, and the server alive afterwards. (bench/bench_serve.py times the
same kind of load and records p50/p99 latency and throughput.)
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

REQUESTS, CLIENTS = 400, 16


@pytest.fixture(scope="module")
def load_files(serve_images, tmp_path_factory):
    """Small good files (photo crops of several sizes, one mirror-padded), so 400 requests stay fast on
    two cores, and the session's bad files (corrupt, not an image, over the pixel limit, empty)."""
    from PIL import Image

    from dgsnet.image.decode import load_rgb

    good_photos, bad = serve_images
    folder = tmp_path_factory.mktemp("load")
    sizes = [(224, 224), (256, 320), (300, 240), (100, 150), (231, 257)]
    good = []
    for i, photo in enumerate(good_photos[:6]):
        pixels = load_rgb(photo)
        h, w = sizes[i % len(sizes)]
        path = folder / f"crop{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels[:h, :w]).save(path, quality=90)
        good.append(path)
    return good, list(bad.items())


def test_400_requests_from_16_clients(server, serve_model, load_files, tmp_path):
    good, bad = load_files
    out = tmp_path / "preds.jsonl"
    result = subprocess.run([sys.executable, "-m", "dgsnet_export.cli", str(serve_model), *map(str, good),
                             "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}

    # request i: one good file, every 8th a bad one, every 10th two good files and a bad one together
    plan = []
    for i in range(REQUESTS):
        if i % 8 == 3:
            plan.append([bad[(i // 8) % len(bad)]])
        elif i % 10 == 5:
            plan.append([("", good[i % len(good)]), bad[i % len(bad)], ("", good[(i + 1) % len(good)])])
        else:
            plan.append([("", good[i % len(good)])])
    bodies = {p: p.read_bytes() for p in good + [path for _, path in bad]}

    def send(client, items):
        start = time.perf_counter()
        response = client.post("/v1/detect", files=[("image", (p.name, bodies[p])) for _, p in items])
        return items, response, time.perf_counter() - start

    clients = [httpx.Client(base_url=server.url, timeout=120) for _ in range(CLIENTS)]
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda job: send(clients[job[0] % CLIENTS], job[1]), enumerate(plan)))
    seconds = time.perf_counter() - start
    for c in clients:
        c.close()

    statuses = [r.status_code for _, r, _ in answers]
    assert not [s for s in statuses if s >= 500], statuses
    scored = failed = 0
    for items, response, _ in answers:
        entries = response.json()["results"]
        assert len(entries) == len(items)
        for (kind, path), entry in zip(items, entries):
            if kind:  # a bad file: its own 4xx and kind
                assert 400 <= entry["status"] < 500 and entry["error"]["kind"] == kind, entry
                failed += 1
            else:
                record = expected[path.name]
                assert (entry["logit"], entry["probability"], entry["label"]) == \
                    (record["logit"], record["probability"], record["label"]), path.name
                scored += 1
        if all(kind for kind, _ in items):
            assert response.status_code == entries[0]["status"]
        else:
            assert response.status_code == 200
    assert scored > 300 and failed >= 50
    assert httpx.get(server.url + "/healthz").status_code == 200  # alive after
    assert httpx.get(server.url + "/readyz").status_code == 200
    latencies = np.array([s for _, _, s in answers])
    print(f"\n{REQUESTS} requests, {CLIENTS} clients: {REQUESTS / seconds:.1f} requests/s, p50 "
          f"{np.percentile(latencies, 50) * 1000:.0f} ms, p99 {np.percentile(latencies, 99) * 1000:.0f} ms")

