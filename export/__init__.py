"""dgsnet_export: the inference-only runtime of exported dgsnet detectors.

Needs onnxruntime, numpy, Pillow and the torch-free dgsnet modules
(dgsnet.image.preprocess, dgsnet.image.decode); never torch or open_clip.

    from dgsnet_export import OnnxDetector
    detector = OnnxDetector("detector.onnx")          # provider="auto": TensorRT, CUDA, CPU
    records = list(detector.predict_paths(["images/"]))

Command line: `dgsnet-predict detector.onnx images/ --out preds.jsonl`.
"""
from dgsnet.image.decode import IMAGE_SUFFIXES

from .inputs import InputList, collect_inputs
from .metadata import FORMAT, MetadataError, ModelInfo
from .preprocessing import Preprocessor
from .providers import provider_chain
from .records import Tally, write_records
from .runtime import ModelLoadError, OnnxDetector, iter_predictions, sigmoid

__all__ = ["FORMAT", "IMAGE_SUFFIXES", "InputList", "MetadataError", "ModelInfo", "ModelLoadError",
           "OnnxDetector", "Preprocessor", "collect_inputs", "iter_predictions", "provider_chain", "sigmoid",
           "Tally", "write_records"]
