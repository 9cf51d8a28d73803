"""dgsnet_export: exporting dgsnet detectors to ONNX and scoring images with them.

Two subpackages, depending one way on dgsnet's library (models, image), never imported by it:
- runtime/ (torch-free: onnxruntime, numpy, Pillow and the torch-free dgsnet modules): metadata,
  preprocessing, providers, detector, records, and the `dgsnet-predict` command line.
- exporter/ (torch, imported when an export runs): metadata writing, graph rewrites, running the
  exporter, verification against torch, TensorRT checks and the trtexec command.

Importing this package imports the runtime only, so it works where torch is not installed:

    from dgsnet_export import OnnxDetector
    detector = OnnxDetector("detector.onnx")          # provider="auto": TensorRT, CUDA, CPU
    records = list(detector.predict_paths(["images/"]))

Command line: `dgsnet-predict detector.onnx images/ --out preds.jsonl`.
"""
from .runtime import (FORMAT, IMAGE_SUFFIXES, InputList, MetadataError, ModelInfo, ModelLoadError, OnnxDetector,
                      preprocess_for, Tally, collect_inputs, iter_predictions, provider_chain, sigmoid, write_records)

__all__ = ["FORMAT", "IMAGE_SUFFIXES", "InputList", "MetadataError", "ModelInfo", "ModelLoadError",
           "OnnxDetector", "preprocess_for", "collect_inputs", "iter_predictions", "provider_chain", "sigmoid",
           "Tally", "write_records"]
