"""`dgsnet serve`: an HTTP service (Starlette + uvicorn) around the torch-free runtime's OnnxDetector.

    app.py       the routes: POST /v1/detect, GET /v1/model, /healthz, /readyz, /metrics, the page at /
    batcher.py   dynamic micro-batching: a bounded queue of decoded images scored together
    limits.py    request limits and the errors that answer them (4xx, one bad image fails only itself)
    metrics.py   Prometheus text exposition, written by hand
    logs.py      one JSON object per log line (access log included)
    cli.py       `dgsnet serve` / `dgsnet-serve`: flags, loading the model, running uvicorn
    page.html    the web page (no external assets)

Never imports torch (tests/image/test_torch_free.py checks it), so any host with onnxruntime serves.
"""
