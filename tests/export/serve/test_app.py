"""dgsnet serve's API through a real uvicorn process (tests/export/serve/conftest.py), against the
references: dgsnet-predict's records for the scores, patch_selection for the patches."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from dgsnet.image.decode import load_rgb
from dgsnet.image.preprocess import patch_selection

from .conftest import running_server


def _files(paths):
    return [("image", (p.name, p.read_bytes())) for p in paths]


def _check_scored(entry, record, path):
    """One API entry against dgsnet-predict's record of the same file: the same numbers, bit for bit."""
    assert entry["status"] == 200, entry
    assert (entry["logit"], entry["probability"], entry["label"]) == \
        (record["logit"], record["probability"], record["label"])
    assert entry["label"] == ("generated" if entry["probability"] > entry["threshold"] else "real")
    chosen = patch_selection(load_rgb(path))
    tile = entry["patches"]["tile"]
    assert [p["index"] for p in tile] == chosen.kept()
    assert {p["index"] for p in tile if p["entropy"] == "low"} == set(chosen.low)
    assert entry["patches"]["grid"] == [chosen.rows, chosen.cols]
    assert all(p["row"] * chosen.cols + p["col"] == p["index"] for p in tile)


def test_multipart_and_json_score_as_dgsnet_predict(server, serve_images, predicted):
    good, _ = serve_images
    model = httpx.get(server.url + "/v1/model").json()
    multipart = httpx.post(server.url + "/v1/detect", files=_files(good[:8]), timeout=120)
    assert multipart.status_code == 200
    payload = {"images": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in good]}
    as_json = httpx.post(server.url + "/v1/detect", json=payload, timeout=120)
    assert as_json.status_code == 200
    entries = multipart.json()["results"] + as_json.json()["results"]
    assert [e["name"] for e in entries] == [p.name for p in good[:8]] + [p.name for p in good]
    for entry, path in zip(entries, good[:8] + good):
        _check_scored(entry, predicted[path.name], path)
        assert entry["model"] == model["id"] and entry["threshold"] == model["threshold"] == 0.5
        assert set(entry["timings"]) == {"decode_ms", "queue_ms", "score_ms", "total_ms"}
    assert {e["label"] for e in entries} == {"real", "generated"}  # the photos do not all look alike
    assert [e["patches"]["padded"] for e in as_json.json()["results"]] == [p.name == "tiny.png" for p in good]
    # a data: URL as a browser's FileReader gives it is the same image
    url = "data:image/png;base64," + base64.b64encode(good[-1].read_bytes()).decode()
    entry = httpx.post(server.url + "/v1/detect", json={"images": [url]}).json()["results"][0]
    assert entry["probability"] == predicted[good[-1].name]["probability"]


def test_one_bad_image_fails_only_its_own_entry(server, serve_images, predicted):
    good, bad = serve_images
    order = [good[0], bad["corrupt"], good[3], bad["unsupported"], bad["too_many_pixels"], bad["empty"]]
    response = httpx.post(server.url + "/v1/detect", files=_files(order), timeout=120)
    assert response.status_code == 200
    entries = response.json()["results"]
    _check_scored(entries[0], predicted[good[0].name], good[0])
    _check_scored(entries[2], predicted[good[3].name], good[3])
    kinds = [(e["status"], e["error"]["kind"]) for e in entries[1:2] + entries[3:]]
    assert kinds == [(422, "corrupt"), (415, "unsupported"), (413, "too_many_pixels"), (400, "empty")]
    assert "4410000 pixels exceeds" in entries[4]["error"]["message"] and "--max-pixels" in entries[4]["error"]["message"]
    # a request of bad images only is answered with the first one's status
    for kind, status in (("corrupt", 422), ("unsupported", 415), ("too_many_pixels", 413)):
        alone = httpx.post(server.url + "/v1/detect", files=_files([bad[kind]]))
        assert alone.status_code == status and alone.json()["results"][0]["error"]["kind"] == kind


def test_request_limits_answer_4xx_naming_the_flag(server, serve_images):
    good, _ = serve_images
    cases = {
        "too_many_images": (413, dict(files=_files([good[0]] * 9)), "--max-images"),
        "request_too_large": (413, dict(content=b"x" * (4 * 2 ** 20 + 1),
                                        headers={"content-type": "application/json"}), "--max-request-mb"),
        "unsupported_media_type": (415, dict(content=b"abc", headers={"content-type": "text/plain"}), "multipart"),
        "url_not_supported": (400, dict(json={"images": [{"url": "http://127.0.0.1:1/a.png"}]}), "never fetches"),
        "bad_json": (400, dict(content=b"{", headers={"content-type": "application/json"}), "JSON"),
        "no_images": (400, dict(json={"images": []}), "no image"),
    }
    for kind, (status, request, says) in cases.items():
        response = httpx.post(server.url + "/v1/detect", timeout=60, **request)
        assert (response.status_code, response.json()["error"]["kind"]) == (status, kind)
        assert says in response.json()["error"]["message"]
    # a body over the limit without a Content-Length (chunked) is cut off while it streams
    chunks = iter([b"y" * 2 ** 20] * 5)
    response = httpx.post(server.url + "/v1/detect", content=chunks, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["kind"]) == (413, "request_too_large")
    entry = httpx.post(server.url + "/v1/detect", json={"images": ["%%%"]}).json()["results"][0]
    assert (entry["status"], entry["error"]["kind"]) == (400, "bad_base64")


def test_health_readiness_model_info_and_metrics(server, serve_model, serve_images):
    import onnx

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = httpx.get(server.url + "/v1/model").json()
    props = {p.key: p.value for p in onnx.load(str(serve_model), load_external_data=False).metadata_props}
    assert (info["backbone"], info["threshold"], info["opset"]) == \
        (props["backbone"], float(props["threshold"]), int(props["opset"]))
    assert info["labels"] == dict(zip("01", json.loads(props["labels"])))
    assert info["limits"]["max_images"] == 8 and info["batching"]["max_batch"] == 8
    first = _metrics(server)
    # one scored image of its own, so the batch-size histogram does not depend on earlier tests
    assert httpx.post(server.url + "/v1/detect", files=_files(serve_images[0][:1]), timeout=120).status_code == 200
    before = _metrics(server)
    assert before["dgsnet_batch_size_count"] == first.get("dgsnet_batch_size_count", 0) + 1
    httpx.post(server.url + "/v1/detect", content=b"abc", headers={"content-type": "text/plain"})
    after = _metrics(server)
    key = 'dgsnet_errors_total{kind="unsupported_media_type"}'
    assert after.get(key, 0) == before.get(key, 0) + 1
    requests = 'dgsnet_requests_total{method="POST",route="/v1/detect",status="415"}'
    assert after[requests] == before.get(requests, 0) + 1
    assert after["dgsnet_request_duration_seconds_count"] == before.get("dgsnet_request_duration_seconds_count", 0) + 1
    assert after['dgsnet_request_duration_seconds_bucket{le="+Inf"}'] == after["dgsnet_request_duration_seconds_count"]
    assert after["dgsnet_queue_depth"] == 0 and after["dgsnet_ready"] == 1
    assert after['dgsnet_batch_size_bucket{le="+Inf"}'] == after["dgsnet_batch_size_count"] >= 1


def _metrics(server) -> dict:
    response = httpx.get(server.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_page_is_served_without_external_assets(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    assert "/v1/detect" in text and 'type="file"' in text
    for external in ("http://", "https://", "src=\"//", "@import", "<link"):
        assert external not in text


def test_limits_a_request_could_never_fit_are_refused_at_startup(serve_model, tmp_path):
    """A request is admitted whole or not at all: --max-images over --max-queue (or --max-decoded-mp under
    --max-pixels) would make a 503 that retrying cannot cure, so the server does not start."""
    from .conftest import ROOT, SERVE

    for flags, names in [(["--max-images", "8", "--max-queue", "2"], ("--max-images 8", "--max-queue 2")),
                         (["--max-pixels", "4", "--max-decoded-mp", "1"], ("--max-decoded-mp 1", "--max-pixels 4"))]:
        result = subprocess.run([sys.executable, "-c", SERVE, str(ROOT / "export"), str(serve_model), "--port", "1",
                                 *flags], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dgsnet-serve: ") and all(n in lines[0] for n in names)


def test_backlog_answers_503_and_bounds_the_decoded_pixels(serve_model, serve_images, predicted, tmp_path):
    """Twelve concurrent one-image requests against room for 6 images or 0.6 MP, while the first batch
    waits 3 s for company: the requests that do not fit get 503 with Retry-After before any of their
    pixels is decoded, every other one 200 with dgsnet-predict's numbers; the pixels held never pass the
    bound (the peak gauge), and everything is given back afterwards."""
    good, _ = serve_images
    photos = [p for p in good if p.suffix in (".jpg", ".png") and p.stem[0].isdigit()][:4]  # 0.13-0.27 MP each
    tiny = [p for p in good if p.name == "tiny.png"]  # 57x40: slots, not pixels, bind
    # 2 tiny files and 10 photos: no 4 of these photos fit in 0.6 MP, so 6 slots never fill, pixels bind
    plan = [tiny[0] if i % 6 == 0 else photos[i % len(photos)] for i in range(12)]
    with running_server(serve_model, tmp_path, "--max-queue", "6", "--max-images", "1", "--max-batch", "8",
                        "--max-wait-ms", "3000", "--max-pixels", "0.3", "--max-decoded-mp", "0.6") as server:
        answers = [None] * len(plan)
        barrier = threading.Barrier(len(plan))

        def post(i):
            barrier.wait()
            answers[i] = httpx.post(server.url + "/v1/detect", files=_files([plan[i]]), timeout=120)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(plan))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses, statuses
        for path, answer in zip(plan, answers):
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1
                error = answer.json()["error"]
                assert error["kind"] == "queue_full" and "--max-queue" in error["message"] \
                    and "--max-decoded-mp" in error["message"]
            else:
                _check_scored(answer.json()["results"][0], predicted[path.name], path)
        metrics = _metrics(server)
        assert metrics["dgsnet_decoded_pixels_limit"] == 600_000
        assert 0 < metrics["dgsnet_decoded_pixels_peak"] <= 600_000
        assert metrics["dgsnet_decoded_pixels"] == 0 and metrics["dgsnet_decoded_images"] == 0  # all given back
        assert metrics['dgsnet_errors_total{kind="queue_full"}'] == statuses.count(503)
        print(f"\nbacklog: {statuses.count(200)} answered 200, {statuses.count(503)} 503; peak "
              f"{metrics['dgsnet_decoded_pixels_peak']:.0f} of 600000 pixels")
        retried = httpx.post(server.url + "/v1/detect", files=_files([photos[0]]), timeout=120)
        assert retried.status_code == 200  # alive, and the room is free again
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_micro_batches_then_graceful_shutdown(serve_model, serve_images, predicted, tmp_path):
    """Four concurrent requests are scored as one batch (--max-batch 4, a long --max-wait-ms); a request
    in flight when SIGTERM arrives is still answered, then the process exits; the log is JSON lines."""
    good, _ = serve_images
    with running_server(serve_model, tmp_path, "--max-batch", "4", "--max-wait-ms", "3000") as server:
        answers = [None] * 4

        def post(i):
            answers[i] = httpx.post(server.url + "/v1/detect", files=_files([good[i]]), timeout=120)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, answer in enumerate(answers):
            entry = answer.json()["results"][0]
            assert entry["batch_size"] == 4
            _check_scored(entry, predicted[good[i].name], good[i])

        late = {}
        waiting = threading.Thread(target=lambda: late.update(r=httpx.post(
            server.url + "/v1/detect", files=_files([good[5]]), timeout=120)))
        waiting.start()
        deadline = time.monotonic() + 30
        while _metrics(server).get("dgsnet_queue_depth", 0) < 1:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.05)  # the image is queued, waiting out --max-wait-ms for company
        status = server.stop()
        waiting.join()
        assert late["r"].status_code == 200
        _check_scored(late["r"].json()["results"][0], predicted[good[5].name], good[5])
        assert status in (0, 143)  # 143: stopped by SIGTERM, after the graceful stop
        access = server.access_entries()
        detects = [e for e in access if e["path"] == "/v1/detect"]
        assert len(detects) == 5 and all(e["status"] == 200 and e["method"] == "POST" for e in detects)
        assert all(isinstance(e["duration_ms"], float) and e["images"] == 1 for e in detects)
        assert any("Shutting down" in line for line in server.log_lines())


def test_bad_model_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    result = subprocess.run([sys.executable, "-m", "dgsnet", "serve", str(bad), "--port", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"dgsnet serve: {bad}: onnxruntime cannot load it")
    assert len(result.stderr.strip().splitlines()) == 1



def test_serves_an_end_to_end_file_with_the_graphs_patch_selection(detector, serve_images, tmp_path):
    """A one-file detector (patch selection in the graph) plugs in through OnnxDetector.score_images: the
    scores are dgsnet-predict's of the same file, the patches the graph's (numpy's, on these photos)."""
    from dgsnet_export.exporter import end_to_end, export_end_to_end

    good, bad = serve_images
    model = tmp_path / "detector-e2e.onnx"
    corpus = [(name, image) for name, image in end_to_end.verification_corpus() if image.shape[0] < 400][:4]
    export_end_to_end(detector, model, metadata={"backbone": "dgs-tiny"}, corpus=corpus)
    out = tmp_path / "preds.jsonl"
    done = subprocess.run([sys.executable, "-m", "dgsnet_export.cli", str(model), *map(str, good), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    predicted = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line) for line in out.read_text().splitlines()}
    with running_server(model, tmp_path, "--max-batch", "4") as server:
        response = httpx.post(server.url + "/v1/detect", files=_files(good + [bad["corrupt"]]), timeout=120)
        assert httpx.get(server.url + "/v1/model").json()["input"]["dtype"] == "uint8"
    assert response.status_code == 200
    entries = response.json()["results"]
    assert entries[-1]["error"]["kind"] == "corrupt"
    for entry, path in zip(entries, good):
        _check_scored(entry, predicted[path.name], path)
