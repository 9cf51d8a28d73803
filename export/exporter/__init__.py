"""The exporter: a trained detector to one verified, TensorRT-ready ONNX file (torch; imported late).

`export_detector` writes one ONNX file: images (N, 3, 224, 224) float32, or
patch-selected uint8 tiles (N, 224, 224, 3) with `with_preprocessing=True`
-> logits (N,) and probabilities (N,), batch axis dynamic. Every export is
checked before it is kept: only ONNX ops TensorRT parses, and onnxruntime
outputs at two batch sizes (neither the traced one) within a tolerance of
torch's.

    spec.py      constants, errors, ExportReport, the metadata written into the file
    graph.py     graph rewrites: export_friendly (batch-first attention), the exported wrapper
    build.py     opset checks, running torch.onnx.export, export_detector / export_checkpoint
    verify.py    graph I/O checks, onnxruntime against torch
    tensorrt.py  the ops TensorRT parses, the trtexec command, building an engine
    end_to_end.py  `--end-to-end`: patch selection as ONNX ops joined to the encoder, verified on a corpus
    triton_repo.py `--triton-repo`: a Triton Inference Server model repository for that graph

Importing it does not import torch; exporting does. It depends on dgsnet's library (models,
image) and on the runtime's metadata reader, never the other way round.
"""
from .build import GRAPH_OPS, check_opset, export_checkpoint, export_detector, opset_range
from .end_to_end import EndToEndReport, export_end_to_end, export_end_to_end_checkpoint, verify_end_to_end
from .graph import export_friendly
from .spec import (DEFAULT_OPSET, FLOAT16_ATOL, FLOAT32_ATOL, ExportError, ExportReport, ExportVerificationError,
                   build_metadata, checkpoint_metadata, normalization_spec)
from .tensorrt import (TENSORRT_OPS, build_tensorrt_engine, check_profile, tensorrt_available, tensorrt_command,
                       tensorrt_issues)
from .triton_repo import triton_config, write_triton_repo
from .verify import verify_onnx

__all__ = ["DEFAULT_OPSET", "EndToEndReport", "ExportError", "ExportReport", "ExportVerificationError", "FLOAT16_ATOL", "FLOAT32_ATOL",
           "GRAPH_OPS", "TENSORRT_OPS", "build_metadata", "build_tensorrt_engine", "check_opset", "check_profile",
           "checkpoint_metadata", "export_checkpoint", "export_detector", "export_end_to_end",
           "export_end_to_end_checkpoint", "triton_config", "verify_end_to_end", "write_triton_repo", "export_friendly", "normalization_spec",
           "opset_range", "tensorrt_available", "tensorrt_command", "tensorrt_issues", "verify_onnx"]
