"""`dgsnet serve MODEL.onnx`: the HTTP service of an exported detector (dgsnet_export.serve; the same
command as `dgsnet-serve`). Torch is never imported: the runtime scores with onnxruntime."""
from __future__ import annotations


def add_serve_parser(sub) -> None:
    from dgsnet_export.serve.cli import add_arguments, serve

    parser = sub.add_parser("serve", help="serve an exported detector over HTTP, with a web page at /",
                            description="Serve an exported detector (.onnx) over HTTP: POST /v1/detect, a web "
                                        "page at /, /healthz, /readyz, /metrics, /v1/model.")
    add_arguments(parser)
    parser.set_defaults(func=lambda args: serve(args, "dgsnet serve"))
