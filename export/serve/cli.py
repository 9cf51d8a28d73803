"""`dgsnet serve MODEL.onnx` and `dgsnet-serve MODEL.onnx`: the HTTP service of an exported detector.

    dgsnet-serve detector.onnx --host 127.0.0.1 --port 8000 --max-batch 16 --max-wait-ms 5

The model is loaded and checked before the port opens (a bad file is one line and exit status 2);
warming up runs once it is open (GET /readyz answers 503 until then). SIGTERM / Ctrl-C stop taking
new connections, let the requests in flight finish (up to --graceful-timeout s), then exit.
"""
from __future__ import annotations

import argparse
import math
import sys

from dgsnet.blas import set_blas_threads
from dgsnet_export.runtime.cli import Command, add_layout_arguments, layout_options, positive_int, run_command

#: Modules the command imports (dgsnet.extras names the pip extra of each).
NEEDS = ("starlette", "uvicorn", "python_multipart", "onnxruntime")


def _number(what: str, low: float, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite float in [low, high] ((low, high] with low_open), else a message
    naming `what`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


_positive_float = _number("a number > 0", 0.0, low_open=True)
_wait_ms = _number("a wait in milliseconds between 0 and 10000", 0.0, 10_000.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the exported detector (.onnx), from `dgsnet export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this "
                        "machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--max-batch", type=positive_int, default=16, metavar="N",
                        help="images scored together at most (default 16)")
    parser.add_argument("--max-wait-ms", type=_wait_ms, default=5.0, metavar="MS",
                        help="how long the first image of a batch waits for others (default 5)")
    parser.add_argument("--max-queue", type=positive_int, default=64, metavar="N",
                        help="images admitted at once, all requests together (being decoded, queued or scored); "
                             "a request that does not fit whole gets 503 with Retry-After (default 64; at least "
                             "--max-images)")
    parser.add_argument("--max-request-mb", type=_positive_float, default=32.0, metavar="MB",
                        help="largest request body in MiB (default 32); larger gets 413")
    parser.add_argument("--max-images", type=positive_int, default=32, metavar="N",
                        help="images in one request at most (default 32); more gets 413")
    parser.add_argument("--max-pixels", type=_positive_float, default=100.0, metavar="MP",
                        help="largest image in megapixels, read from its header before decoding (default 100, "
                             "the decompression-bomb limit); a larger one fails its own entry with 413")
    parser.add_argument("--max-decoded-mp", type=_positive_float, default=None, metavar="MP",
                        help="decoded megapixels held at once, all requests together, reserved from each image's "
                             "header before it is decoded (3 bytes each); a request that does not fit gets 503 "
                             "with Retry-After (default --max-queue x --max-pixels; at least --max-pixels)")
    parser.add_argument("--provider", default="auto", choices=["auto", "tensorrt", "cuda", "cpu"],
                        help="execution provider; auto = TensorRT, else CUDA, else CPU")
    parser.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--graceful-timeout", type=positive_int, default=30, metavar="S",
                        help="on SIGTERM / Ctrl-C, seconds the requests in flight get to finish (default 30)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="JSON logs on stderr at this level (default info: one access line per request)")
    add_layout_arguments(parser)


def limits_of(args):
    from .limits import MB, Limits

    decoded = getattr(args, "max_decoded_mp", None)
    return Limits(max_request_bytes=int(args.max_request_mb * MB), max_images=args.max_images,
                  max_pixels=int(args.max_pixels * 1_000_000), max_queue=args.max_queue,
                  max_decoded_pixels=None if decoded is None else int(decoded * 1_000_000))


def serve(args, prog: str) -> int:
    """Loads the model, then runs uvicorn until a stop signal; returns the exit status."""
    from dgsnet.extras import missing_extra

    absent = missing_extra(prog, NEEDS)
    if absent:
        print(absent, file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"{prog}: --port {args.port}: choose a TCP port between 1 and 65535", file=sys.stderr)
        return 2
    try:
        limits = limits_of(args)  # contradicting limits are refused before the model is loaded
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from dgsnet_export.runtime import MetadataError, ModelLoadError, OnnxDetector

    from .app import Service, create_app
    from .logs import log_config

    try:
        detector = OnnxDetector(args.model, provider=args.provider, threads=args.threads,
                                max_batch=args.max_batch, **layout_options(args))
    except (ModelLoadError, MetadataError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    for note in detector.notes:
        print(f"{prog}: {note}", file=sys.stderr)
    # the scoring thread's patch selection beside onnxruntime's own threads (5x fewer requests/s
    # measured on 2 busy cores with a full pool)
    set_blas_threads(1)
    service = Service(detector, limits=limits, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_config=log_config(args.log_level),
                            access_log=False, timeout_graceful_shutdown=args.graceful_timeout, lifespan="on",
                            server_header=False)
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns after a graceful stop, or when it could not start (a port in use: logged above)
    return 0 if server.started else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgsnet-serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    command = Command("dgsnet-serve", expected=(ValueError, RuntimeError))

    def work() -> int:
        args = build_parser().parse_args(argv)
        command.debug = args.debug
        command.on_interrupt = lambda: "stopped; the requests in flight were answered first"
        return serve(args, "dgsnet-serve")

    return run_command(command, work)


if __name__ == "__main__":
    sys.exit(main())
