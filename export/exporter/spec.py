"""What an export is: its constants, errors and report, and the metadata written into the ONNX file.

The runtime's reader (dgsnet_export.runtime.metadata) defines the metadata format and the step
names; the writer here uses them, so the two cannot drift apart.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..runtime.metadata import FORMAT as METADATA_FORMAT
from ..runtime.metadata import NORMALIZE, PATCH_SELECTION

DEFAULT_OPSET = 17
OUTPUT_NAMES = ("logits", "probabilities")
INPUT_SIZE = 224
TRACE_BATCH = 2  # traced batch size; verification runs at others so a baked-in batch fails
FLOAT32_ATOL = 1e-4  # max |onnx - torch| on logits, relative to max(1, max |logit|)
FLOAT16_ATOL = 2e-2


def _labels() -> tuple[str, str]:
    from dgsnet.models import LABELS  # imported late: this module loads without torch until it exports

    return LABELS


class ExportError(RuntimeError):
    """The detector could not be exported to a valid, TensorRT-ready ONNX file."""


class ExportVerificationError(ExportError):
    """onnxruntime disagrees with torch beyond the tolerance; the file was not kept."""


@dataclass
class ExportReport:
    path: str
    precision: str
    opset: int
    exporter: str
    input_name: str
    input_dtype: str
    batch_sizes: tuple[int, ...]
    max_abs_error: float  # on logits, over all verified batches
    max_rel_error: float  # max_abs_error / max(1, max |torch logit|): compared with atol
    max_prob_error: float
    atol: float
    op_types: dict[str, int]
    metadata: dict[str, str]
    file_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.path}: {self.precision} opset {self.opset} ({self.exporter}), input "
                f"{self.input_name} {self.input_dtype}, verified at batch {list(self.batch_sizes)}: "
                f"max |logit error| {self.max_abs_error:.3g} (relative {self.max_rel_error:.3g} <= "
                f"{self.atol:g}), max |probability error| {self.max_prob_error:.3g}; "
                f"{sum(self.op_types.values())} nodes, all TensorRT-parsable; "
                f"{self.file_bytes / 2**20:.1f} MiB in {self.seconds:.1f} s")


def normalization_spec(name_or_spec) -> dict:
    """'imagenet' | 'clip' | {'name', 'mean', 'std'} -> {'name', 'mean', 'std'} (lists of 3 floats)."""
    if isinstance(name_or_spec, str):
        from dgsnet.image.preprocess import NORMS as known

        if name_or_spec not in known:
            raise ValueError(f"normalization {name_or_spec!r}: use one of {sorted(known)} or a dict "
                             "with 'mean' and 'std'")
        mean, std = known[name_or_spec]
        return {"name": name_or_spec, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    spec = dict(name_or_spec)
    try:
        mean, std = [float(v) for v in spec["mean"]], [float(v) for v in spec["std"]]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"normalization {name_or_spec!r}: needs 'mean' and 'std', 3 numbers each") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalization {name_or_spec!r}: mean and std need 3 values each, std > 0")
    return {"name": str(spec.get("name", "custom")), "mean": mean, "std": std}


def build_metadata(metadata: dict, *, precision: str, with_preprocessing: bool, opset: int,
                   exporter: str, input_name: str) -> dict[str, str]:
    """The ONNX metadata_props (all strings; JSON where structured). dgsnet_export reads them back."""
    from dgsnet.version import __version__

    if not metadata.get("backbone"):
        raise ValueError("metadata needs 'backbone' (the open_clip model name, e.g. 'ViT-L-14')")
    input_size = int(metadata.get("input_size", INPUT_SIZE))
    if input_size != INPUT_SIZE:
        raise ValueError(f"metadata input_size={input_size}: dgsnet detectors take {INPUT_SIZE}x{INPUT_SIZE} "
                         "tiles (7x7 patches of 32 px)")
    threshold = float(metadata.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"metadata threshold={threshold}: a probability strictly between 0 and 1")
    norm = normalization_spec(metadata.get("normalization", "imagenet"))
    if with_preprocessing:
        graph_input = {"name": input_name, "dtype": "uint8", "layout": "NHWC",
                       "shape": ["batch", INPUT_SIZE, INPUT_SIZE, 3]}
        steps = {"caller": [PATCH_SELECTION], "in_graph": [NORMALIZE]}
    else:
        graph_input = {"name": input_name, "dtype": "float32", "layout": "NCHW",
                       "shape": ["batch", 3, INPUT_SIZE, INPUT_SIZE]}
        steps = {"caller": [PATCH_SELECTION, NORMALIZE], "in_graph": []}
    props = {
        "format": METADATA_FORMAT,
        "dgsnet_version": __version__,
        "backbone": str(metadata["backbone"]),
        "pretrained": str(metadata.get("pretrained") or ""),
        "normalization": json.dumps(norm),
        "input_size": str(INPUT_SIZE),
        "threshold": repr(threshold),
        "preprocessing": json.dumps(steps),
        "input": json.dumps(graph_input),
        "outputs": json.dumps(list(OUTPUT_NAMES)),
        "labels": json.dumps(list(_labels())),
        "precision": precision,
        "opset": str(opset),
        "exporter": exporter,
    }
    for key, value in metadata.items():  # anything else the caller records (checkpoint, run id, ...)
        if key not in props and key not in ("normalization", "threshold", "input_size"):
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def checkpoint_metadata(meta: dict, run_dir, head: str, threshold: float = 0.5) -> dict:
    """export_detector's `metadata` for a detector loaded from a run directory's model.json."""
    backbone = meta["backbone"]
    return {"backbone": backbone["model"], "pretrained": backbone.get("pretrained") or "",
            "normalization": meta.get("norm", "imagenet"), "threshold": threshold,
            "checkpoint": str(run_dir), "head": head, "stage": meta.get("stage"), "step": meta.get("step"),
            "lora": meta.get("lora"), "visual_fingerprint": backbone.get("visual_fingerprint", ""),
            "trained_with_dgsnet": meta.get("dgsnet_version", "")}
