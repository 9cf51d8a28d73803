"""The Starlette application of `dgsnet serve`: routes, request parsing, limits, the access log.

    POST /v1/detect   images as multipart files, or JSON {"images": [{"name", "data": base64}, ...]}
    GET  /v1/model    the model's id, name, threshold and labels, and the rest of its ONNX metadata
    GET  /healthz     200 while the process runs
    GET  /readyz      200 once the model is loaded and warmed, 503 before
    GET  /metrics     Prometheus text
    GET  /            the web page

Each request's images are admitted before any pixel is decoded: their header sizes are reserved from
one account of --max-queue images and --max-decoded-mp pixels shared by all requests (admission.py),
or the request is refused with 503 and Retry-After; the reservation is held until the request is
answered. Admitted images are decoded on Starlette's thread pool with dgsnet's decoder (the bomb
limit read from the header before any pixel is decoded), then queued to the MicroBatcher, which
scores them through the runtime's public OnnxDetector.score_images, the same preprocessing and
model `dgsnet-predict` runs, so a file gets the same logit here as there. The server never fetches a URL.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dgsnet.fileio import sha256_file
from dgsnet.scoring import non_finite_message, sigmoid

from . import logs
from .admission import Admission, Reservation, header_pixels
from .batcher import MicroBatcher, QueueFull
from .limits import Limits, RequestError, image_error, too_large, too_many_images
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("dgsnet.serve")
PAGE = Path(__file__).with_name("page.html")
ROUTES = ("/", "/v1/detect", "/v1/model", "/healthz", "/readyz", "/metrics")
# The page loads nothing from elsewhere; the browser is told so.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'")


class Service:
    """The state behind the routes: the detector, the batcher, the limits, the metrics."""

    def __init__(self, detector, *, limits: Limits = Limits(), max_batch: int = 16, max_wait_ms: float = 5.0):
        self.detector, self.info, self.limits = detector, detector.info, limits
        self.sha256 = sha256_file(detector.path)
        self.model_id = f"{detector.path.stem}@sha256:{self.sha256[:12]}"
        self.ready = False
        self.batcher = MicroBatcher(detector.score_images, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    max_queue=limits.max_queue, on_batch=lambda n: self.metrics.batch_size.observe(n))
        self.admission = Admission(limits.max_queue, limits.decoded_pixel_limit)
        self.metrics = Metrics(queue_depth=lambda: self.batcher.pending, admission=self.admission)
        self.decode = getattr(detector.preprocess, "decode", "dgsnet")

    # ------------------------------------------------------------ model

    def model_info(self) -> dict:
        info = self.info
        return {"id": self.model_id, "name": self.detector.path.name, "sha256": self.sha256,
                "backbone": info.backbone, "pretrained": info.pretrained, "threshold": info.threshold,
                "labels": {"0": info.labels[0], "1": info.labels[1]}, "precision": info.precision,
                "opset": info.opset, "dgsnet_version": info.dgsnet_version, "provider": self.detector.provider,
                "input": {"name": info.input_name, "dtype": info.input_dtype, "layout": info.input_layout,
                          "size": info.input_size},
                "preprocessing": {"caller": list(info.caller_steps), "in_graph": list(info.graph_steps),
                                  "normalization": info.normalization},
                "outputs": list(info.outputs), "metadata": dict(info.extra),
                "limits": {"max_request_bytes": self.limits.max_request_bytes, "max_images": self.limits.max_images,
                           "max_pixels": self.limits.max_pixels, "max_queue": self.limits.max_queue,
                           "max_decoded_pixels": self.limits.decoded_pixel_limit},
                "batching": {"max_batch": self.batcher.max_batch, "max_wait_ms": self.batcher.max_wait * 1000.0}}

    def warm_up(self) -> None:
        """Two images through the whole path (preprocessing, both batch shapes the session sees first)."""
        import numpy as np

        ramp = np.linspace(0, 255, 256 * 256 * 3).reshape(256, 256, 3).astype(np.uint8)
        results = self.detector.score_images([ramp, ramp[::-1].copy()], ["warm-up-1.png", "warm-up-2.png"])
        if any("error" in r for r in results):
            raise RuntimeError(f"{self.detector.path}: warm-up failed: {results}")
        self.ready = True
        self.metrics.ready.set(1)

    # ------------------------------------------------------------ request parsing

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
        except ClientDisconnect:
            raise RequestError(400, "client_disconnected", "the client went away before sending the whole body")
        return b"".join(chunks)

    async def images_of(self, request: Request) -> list[tuple[str, bytes | RequestError]]:
        """(name, bytes) per image sent, or (name, RequestError) for one that cannot even be read."""
        body = await self.read_body(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            request._body = body  # the form parser reads this instead of the consumed stream
            try:
                form = await request.form(max_files=self.limits.max_images + 1, max_fields=1000,
                                          max_part_size=self.limits.max_request_bytes)
            except Exception as exc:  # noqa: BLE001 - the multipart parser's errors are the client's
                text = getattr(exc, "detail", None) or str(exc)
                if "files" in str(text).lower() and "many" in str(text).lower():
                    raise too_many_images(self.limits.max_images + 1, self.limits.max_images) from None
                raise RequestError(400, "bad_multipart", f"the multipart body cannot be parsed ({text}); send "
                                   "one file field per image") from None
            items = []
            for index, (_, value) in enumerate(form.multi_items()):
                if hasattr(value, "read"):
                    items.append((value.filename or f"image-{index + 1}", await value.read()))
            await form.close()
        elif kind == "application/json":
            items = self.json_images(body)
        else:
            raise RequestError(415, "unsupported_media_type",
                               f"Content-Type {kind or '(none)'}: send multipart/form-data (one file field per "
                               'image) or application/json {"images": [{"name": ..., "data": base64}]}')
        if not items:
            raise RequestError(400, "no_images", "the request holds no image: send one file field per image, "
                               'or JSON {"images": [...]}')
        if len(items) > self.limits.max_images:
            raise too_many_images(len(items), self.limits.max_images)
        return items

    def json_images(self, body: bytes) -> list:
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, "bad_json", f"the body is not JSON ({exc})") from None
        entries = payload.get("images") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            raise RequestError(400, "bad_json", 'JSON bodies are {"images": [{"name": "a.png", "data": '
                               '"<base64>"}, ...]} (or a list of base64 strings)')
        items = []
        for index, entry in enumerate(entries):
            name = f"image-{index + 1}"
            if isinstance(entry, dict):
                if "url" in entry and "data" not in entry:
                    raise RequestError(400, "url_not_supported", f"images[{index}] gives a URL: this server never "
                                       "fetches URLs; send the image's bytes, base64-encoded, as \"data\"")
                name, data = str(entry.get("name") or name), entry.get("data")
            else:
                data = entry
            if not isinstance(data, str):
                items.append((name, image_error("bad_base64", f"images[{index}]: \"data\" must be a base64 string")))
                continue
            if data.startswith("data:") and "," in data:  # a data: URL, as a browser's FileReader makes
                data = data.split(",", 1)[1]
            try:
                items.append((name, base64.b64decode(data, validate=True)))
            except (binascii.Error, ValueError) as exc:
                items.append((name, image_error("bad_base64", f"{name}: not valid base64 ({exc})")))
        return items

    def decode_one(self, name: str, data) -> tuple:
        """(rgb, None, ms) or (None, RequestError, ms); runs on a worker thread."""
        from dgsnet.image.decode import ImageLoadError, load_rgb

        start = time.perf_counter()
        if isinstance(data, RequestError):
            return None, data, 0.0
        if not data:
            return None, image_error("empty", f"{name}: the file is empty"), 0.0
        try:
            rgb = load_rgb(data, max_pixels=self.limits.max_pixels, decode=self.decode)
        except ImageLoadError as exc:
            reason = exc.reason
            kind = ("unsupported" if reason.startswith("not an image format") else
                    "too_many_pixels" if "decompression-bomb limit" in reason else "corrupt")
            fix = ("downscale it or send a smaller image (--max-pixels is the limit)" if kind == "too_many_pixels"
                   else "send a PNG, JPEG, WebP, BMP, TIFF or GIF file" if kind == "unsupported"
                   else "the file is damaged: send it again or re-save it")
            error = image_error(kind, f"{name}: {reason}; {fix}")
            return None, error, (time.perf_counter() - start) * 1000.0
        return rgb, None, (time.perf_counter() - start) * 1000.0

    def admit(self, pixels: list) -> Reservation:
        """The request's reservation (its images' header pixels), or RequestError 503 when it does not fit."""
        wanted = [p for p in pixels if p is not None and p <= self.limits.max_pixels]
        reservation = self.admission.try_reserve(wanted)
        if reservation is not None:
            return reservation
        held = self.admission
        retry = self.batcher.retry_after(held.images + len(wanted))
        raise RequestError(503, "queue_full", f"the server is busy: {held.images} images ({held.pixels / 1e6:.2f} MP) "
                           f"are being decoded, queued or scored, and this request's {len(wanted)} "
                           f"({sum(wanted) / 1e6:.2f} MP) would pass the limit of {held.max_images} images "
                           f"(--max-queue) or {held.max_pixels / 1e6:g} MP (--max-decoded-mp); retry in {retry} s",
                           {"Retry-After": str(retry)})

    # ------------------------------------------------------------ scoring

    def entry(self, name: str, result: dict, decode_ms: float, started: float) -> dict:
        if "error" in result:
            return self.failed(name, image_error("not_scored", f"{name}: {result['error']}"))
        logit = float(result["logit"])
        if not math.isfinite(logit):
            return self.failed(name, image_error("not_scored", non_finite_message(name, logit)))
        probability = sigmoid(logit)
        threshold = self.info.threshold
        timings = {"decode_ms": decode_ms, **result["timings"], "total_ms": (time.perf_counter() - started) * 1000.0}
        self.metrics.images.inc(outcome="scored")
        return {"name": name, "status": 200, "probability": probability,
                # strictly above, as dgsnet-predict and dgsnet eval label
                "label": self.info.labels[1] if probability > threshold else self.info.labels[0],
                "logit": logit, "threshold": threshold, "model": self.model_id, "batch_size": result["batch_size"],
                "timings": {k: round(v, 3) for k, v in timings.items()},
                "patches": patches_json(result.get("patches"))}

    def failed(self, name: str, error: RequestError) -> dict:
        self.metrics.images.inc(outcome="error")
        self.metrics.errors.inc(kind=error.kind)
        return {"name": name, "status": error.status, **error.body()}

    async def detect(self, request: Request) -> Response:
        started = time.perf_counter()
        reservation = None
        try:
            if not self.ready:
                raise RequestError(503, "not_ready", "the model is still loading and warming up; retry shortly "
                                   "(GET /readyz says when)", {"Retry-After": "1"})
            items = await self.images_of(request)
            request.scope["dgsnet"] = {"images": len(items)}
            pixels = await run_in_threadpool(lambda: [header_pixels(d) for _, d in items])
            reservation = self.admit(pixels)  # before any pixel is decoded
            decoded = await run_in_threadpool(lambda: [self.decode_one(n, d) for n, d in items])
            good = [(rgb, name) for (name, _), (rgb, _, _) in zip(items, decoded) if rgb is not None]
            outcomes = [(rgb is not None, error, ms) for rgb, error, ms in decoded]
            del decoded  # the pixels live in `good` until scored, then nowhere
            try:
                scored = iter(await self.batcher.submit(good))
            except QueueFull as exc:
                raise RequestError(503, "queue_full", f"the server is busy: {exc}",
                                   {"Retry-After": str(exc.retry_after)}) from None
            finally:
                del good
            results = [self.entry(name, next(scored), ms, started) if ok else self.failed(name, error)
                       for (name, _), (ok, error, ms) in zip(items, outcomes)]
        except RequestError as exc:
            self.metrics.errors.inc(kind=exc.kind)
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)
        finally:
            if reservation is not None:
                reservation.release()
            self.metrics.latency.observe(time.perf_counter() - started)
        ok = [r for r in results if r["status"] == 200]
        request.scope["dgsnet"].update(scored=len(ok), failed=len(results) - len(ok))
        status = 200 if ok else results[0]["status"]  # one bad image among good ones fails only itself
        body = {"model": {"id": self.model_id, "name": self.detector.path.name, "threshold": self.info.threshold,
                          "labels": list(self.info.labels)}, "results": results}
        return JSONResponse(body, status)


def patches_json(chosen) -> dict | None:
    """The patches the tile holds, in tile order (row by row of the 7x7 grid), each with its place in the
    padded/cropped image's patch grid and whether it was picked for low or high entropy."""
    if chosen is None:
        return None
    low = set(chosen.low)
    tile = [{"index": i, "row": i // chosen.cols, "col": i % chosen.cols, "entropy": "low" if i in low else "high"}
            for i in chosen.kept()]
    return {"patch_size": 32, "grid": [chosen.rows, chosen.cols], "padded": chosen.padded, "tile": tile}


class AccessLog:
    """ASGI middleware: one JSON access-log line and one request count per HTTP request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            route = path if path in ROUTES else "other"
            self.metrics.requests.inc(route=route, method=scope.get("method", ""), status=str(status[0]))
            client = scope.get("client")
            logs.access(scope.get("method", ""), path, status[0], time.perf_counter() - start,
                        f"{client[0]}:{client[1]}" if client else None, **scope.get("dgsnet", {}))


def create_app(service: Service) -> Starlette:
    async def page(request):
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Content-Security-Policy": PAGE_CSP})

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    async def readyz(request):
        if service.ready:
            return JSONResponse({"status": "ready", "model": service.model_id})
        return JSONResponse({"status": "loading", "model": service.model_id}, 503, headers={"Retry-After": "1"})

    async def metrics(request):
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def model(request):
        return JSONResponse(service.model_info())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import asyncio

        service.batcher.start()
        warm = asyncio.get_running_loop().run_in_executor(None, service.warm_up)
        warm.add_done_callback(lambda f: f.exception() and log.error("warm-up failed: %s", f.exception()))
        yield
        await service.batcher.stop()  # uvicorn has let the requests in flight finish

    app = Starlette(routes=[Route("/", page), Route("/v1/detect", service.detect, methods=["POST"]),
                            Route("/v1/model", model), Route("/healthz", healthz), Route("/readyz", readyz),
                            Route("/metrics", metrics)], lifespan=lifespan)
    app.state.service = service
    app.add_middleware(AccessLog, metrics=service.metrics)
    return app
