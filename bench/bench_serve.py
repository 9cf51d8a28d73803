"""`dgsnet serve` under load: latency (p50/p90/p99) and throughput on loopback, micro-batching on and off.

Each configuration is a real server process (uvicorn) on a free loopback port, serving the same
exported detector (random-initialised open_clip backbone, as `dgsnet export` writes it); 16 client
threads send the same requests to each: one image per request (photo crops, PNG and JPEG, several
sizes), every 8th a bad file (truncated, not an image), which must come back 4xx. Rows, side by side:
  unbatched   --max-batch 1 (baseline of the ratio column)
  batched     --max-batch 16 --max-wait-ms 5 (the default)

    python bench/bench_serve.py [--quick] [--model dgs-tiny] [--requests 400] [--clients 16]
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common import base_parser, markdown_table, results_dir, write_results

CONFIGS = {"unbatched": ["--max-batch", "1", "--max-wait-ms", "0"],
           "batched": ["--max-batch", "16", "--max-wait-ms", "5"]}


def export_model(name: str, folder: str) -> str:
    from dgsnet.models import BackboneSpec, DGSNetModel
    from dgsnet_export.exporter import export_detector

    detector = DGSNetModel(BackboneSpec(model=name, pretrained=None, init_seed=0)).detector().eval()
    path = os.path.join(folder, f"{name}.onnx")
    export_detector(detector, path, metadata={"backbone": name})
    return path


def request_files(count: int) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, good) per request: photo crops of several sizes, every 8th a bad file."""
    import skimage.data
    from PIL import Image

    crops = []
    for i, (photo, (h, w)) in enumerate(zip(("astronaut", "chelsea", "coffee", "rocket"),
                                          ((224, 224), (256, 320), (300, 240), (231, 257)))):
        buffer = io.BytesIO()
        fmt = "PNG" if i % 2 else "JPEG"
        Image.fromarray(np.asarray(getattr(skimage.data, photo)())[:h, :w]).save(buffer, format=fmt)
        crops.append((f"{photo}.{fmt.lower()}", buffer.getvalue()))
    bad = [("truncated.png", crops[1][1][:2000]), ("notes.png", b"not an image\n")]
    return [(*bad[(i // 8) % 2], False) if i % 8 == 3 else (*crops[i % len(crops)], True) for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_config(model: str, flags: list[str], plan, clients: int) -> dict:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "dgsnet_export.serve.cli", model, "--port", str(port),
                               "--log-level", "warning", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        pool_clients = [httpx.Client(base_url=url, timeout=120) for _ in range(clients)]

        def send(job):
            index, (name, data, good) = job
            start = time.perf_counter()
            response = pool_clients[index % clients].post("/v1/detect", files=[("image", (name, data))])
            return good, response.status_code, time.perf_counter() - start

        for job in enumerate(plan[:clients]):  # warm the connections
            send(job)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(send, enumerate(plan)))
        seconds = time.perf_counter() - start
        metrics = httpx.get(url + "/metrics").text
        for c in pool_clients:
            c.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    wrong = [(good, status) for good, status, _ in answers if (status == 200) != good or status >= 500]
    if wrong:
        raise RuntimeError(f"{len(wrong)} answers with the wrong status, e.g. {wrong[:5]}")
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    latency = np.array([s for _, _, s in answers]) * 1000.0
    images = sum(good for good, _, _ in answers)
    return {"requests": len(plan), "requests_per_s": len(plan) / seconds, "images_per_s": images / seconds,
            "p50_ms": float(np.percentile(latency, 50)), "p90_ms": float(np.percentile(latency, 90)),
            "p99_ms": float(np.percentile(latency, 99)), "seconds": seconds,
            "mean_batch": float(values["dgsnet_batch_size_sum"]) / max(1.0, float(values["dgsnet_batch_size_count"])),
            "bad_4xx": sum(not good for good, _, _ in answers)}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="dgs-tiny", help="open_clip model config to export (default dgs-tiny)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    requests = 48 if args.quick else args.requests
    plan = request_files(requests)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        model = export_model(args.model, folder)
        rows = []
        for name, flags in CONFIGS.items():
            row = {"config": name, "flags": " ".join(flags), **run_config(model, flags, plan, args.clients)}
            rows.append(row)
            print(f"{name}: {row['requests_per_s']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms, "
                  f"p99 {row['p99_ms']:.0f} ms, mean batch {row['mean_batch']:.1f}", flush=True)
    for row in rows:
        row["throughput_vs_unbatched"] = row["requests_per_s"] / rows[0]["requests_per_s"]
    print(markdown_table(rows, ["config", "requests_per_s", "images_per_s", "p50_ms", "p90_ms", "p99_ms",
                                "mean_batch", "throughput_vs_unbatched"]))
    if not args.quick:
        meta = {"model": args.model, "clients": args.clients, "load_average_before": load,
                "load_average_after": os.getloadavg()[0]}
        print(write_results(results_dir(args, "cpu"), "bench_serve", rows, meta))


if __name__ == "__main__":
    main()
