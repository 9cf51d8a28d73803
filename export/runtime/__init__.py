"""The runtime: scoring images with an exported detector, with onnxruntime and numpy; never torch.

    metadata.py       reads and checks the file's metadata (the format the exporter writes)
    preprocessing.py  the caller-side steps the metadata names (patch selection, normalisation)
    providers.py      execution providers: TensorRT, CUDA, CPU
    detector.py       OnnxDetector: load, check the graph, score batches
    records.py        JSON-lines records and the summary line
    cli.py            `dgsnet-predict`, and the command-line helpers `dgsnet`'s commands share

Its only dgsnet imports are torch-free: dgsnet.image, dgsnet.scoring (the loop both engines
run), dgsnet.outputs and dgsnet.fileio (tests/image/test_torch_free.py checks it).
"""
from dgsnet.image.decode import IMAGE_SUFFIXES
from dgsnet.scoring import InputList, collect_inputs, iter_predictions, sigmoid

from .detector import ModelLoadError, OnnxDetector
from .metadata import FORMAT, MetadataError, ModelInfo
from .preprocessing import preprocess_for
from .providers import provider_chain
from .records import Tally, write_records

__all__ = ["FORMAT", "IMAGE_SUFFIXES", "InputList", "MetadataError", "ModelInfo", "ModelLoadError",
           "OnnxDetector", "preprocess_for", "collect_inputs", "iter_predictions", "provider_chain", "sigmoid",
           "Tally", "write_records"]
