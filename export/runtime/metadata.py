"""The metadata dgsnet writes into an exported detector's ONNX metadata_props, read back and checked.

The writer is dgsnet_export.exporter.spec.build_metadata; this reader needs only the
standard library, so the runtime stays free of torch and onnx.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

FORMAT = "dgsnet-detector/1"
PATCH_SELECTION, NORMALIZE = "dgs-patch-selection", "normalize"  # preprocessing step names
KNOWN_CALLER_STEPS = (PATCH_SELECTION, NORMALIZE)
KNOWN_GRAPH_STEPS = (PATCH_SELECTION, NORMALIZE)  # both: an end-to-end file (`dgsnet export --end-to-end`)
REEXPORT = "re-export the detector with `dgsnet export`"  # the fix every contradiction names


class MetadataError(ValueError):
    """The ONNX file lacks, or has malformed, dgsnet metadata."""


@dataclass(frozen=True)
class ModelInfo:
    backbone: str
    pretrained: str
    dgsnet_version: str
    input_name: str
    input_dtype: str  # "float32" (normalised NCHW) or "uint8" (NHWC tiles, normalised in the graph)
    input_layout: str  # NCHW / NHWC tiles; HWC (one raw image) or NHWC raw images when end-to-end
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    normalization: str
    caller_steps: tuple[str, ...]  # what the caller does before feeding the graph, in order
    graph_steps: tuple[str, ...]  # what the graph does itself
    outputs: tuple[str, ...]
    labels: tuple[str, str]  # (label for 0, label for 1); 1 = generated
    threshold: float
    precision: str
    opset: int
    extra: dict  # every other key, as stored

    @property
    def end_to_end(self) -> bool:
        """Patch selection runs in the graph: it takes raw images (any size) and gives patch_indices."""
        return PATCH_SELECTION in self.graph_steps

    @property
    def batched_images(self) -> bool:
        """An end-to-end graph taking (N, H, W, 3) images of one size, rather than one (H, W, 3) image."""
        return self.end_to_end and self.input_layout == "NHWC"

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelInfo":
        if props.get("format") != FORMAT:
            found = props.get("format")
            raise MetadataError(f"{source}: metadata format is {found!r}, expected {FORMAT!r}; "
                                "export it with `dgsnet export` (this runtime reads dgsnet detectors only)"
                                if found is None or not str(found).startswith("dgsnet-detector/") else
                                f"{source}: metadata format {found!r} is newer than this runtime "
                                f"({FORMAT!r}); upgrade dgsnet")

        def field(key: str, parse=str):
            if key not in props:
                raise MetadataError(f"{source}: metadata key {key!r} is missing; {REEXPORT}")
            try:
                return parse(props[key])
            except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                raise MetadataError(f"{source}: metadata {key!r}={props[key]!r} is malformed ({exc}); "
                                    f"{REEXPORT}") from None

        norm = field("normalization", json.loads)
        graph_input = field("input", json.loads)
        steps = field("preprocessing", json.loads)
        try:
            mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
            caller, in_graph = tuple(steps["caller"]), tuple(steps["in_graph"])
            input_name, input_dtype = str(graph_input["name"]), str(graph_input["dtype"])
            layout = str(graph_input["layout"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: metadata normalization/input/preprocessing is incomplete "
                                f"({type(exc).__name__}: {exc}); {REEXPORT}") from None
        if len(mean) != 3 or len(std) != 3:
            raise MetadataError(f"{source}: normalization needs 3 means and 3 stds, got {norm}; {REEXPORT}")
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            # a zero or NaN std turns every input into inf/NaN: every image would score NaN
            raise MetadataError(f"{source}: normalization mean {list(mean)} / std {list(std)} must be finite "
                                f"numbers with std > 0; {REEXPORT}")
        if not isinstance(steps.get("caller"), list) or not isinstance(steps.get("in_graph"), list):
            raise MetadataError(f"{source}: metadata preprocessing {steps} needs 'caller' and 'in_graph' lists; "
                                f"{REEXPORT}")
        unknown = [s for s in caller if s not in KNOWN_CALLER_STEPS] + \
                  [s for s in in_graph if s not in KNOWN_GRAPH_STEPS]
        if unknown:
            raise MetadataError(f"{source}: preprocessing steps {unknown} are unknown to this runtime; upgrade dgsnet")
        end_to_end = PATCH_SELECTION in in_graph
        if end_to_end and (caller or NORMALIZE not in in_graph or input_dtype != "uint8"
                           or layout not in ("HWC", "NHWC")):
            raise MetadataError(f"{source}: patch selection in the graph needs normalisation there too, nothing "
                                f"left to the caller and a uint8 HWC or NHWC image input; the metadata says "
                                f"caller {list(caller)}, graph {list(in_graph)}, input {input_dtype} {layout}; "
                                f"{REEXPORT}")
        if not end_to_end and (input_dtype, layout) not in (("float32", "NCHW"), ("uint8", "NHWC")):
            raise MetadataError(f"{source}: graph input {input_dtype} {layout} is not one this runtime feeds; "
                                f"{REEXPORT}")
        # float32 NCHW inputs are normalised by the caller, uint8 NHWC tiles by the graph: exactly once
        normalized_by = [where for where, names in (("caller", caller), ("graph", in_graph)) if NORMALIZE in names]
        expected = ["caller"] if input_dtype == "float32" else ["graph"]
        if normalized_by != expected:
            raise MetadataError(f"{source}: metadata says the {input_dtype} {layout} input is normalised by "
                                f"{' and '.join(normalized_by) or 'nobody'}, but that input needs it done by the "
                                f"{expected[0]} only; {REEXPORT}")
        input_size = field("input_size", int)
        if input_size < 1:
            raise MetadataError(f"{source}: metadata input_size {input_size} is not a positive image size; "
                                f"{REEXPORT}")
        labels = field("labels", json.loads)
        if not (isinstance(labels, list) and len(labels) == 2 and all(isinstance(v, str) and v for v in labels)
                and labels[0] != labels[1]):
            raise MetadataError(f"{source}: metadata labels {props['labels']} must be a list of 2 different "
                                f"non-empty strings (label for 0, label for 1); {REEXPORT}")
        outputs = field("outputs", json.loads)
        if not (isinstance(outputs, list) and outputs and all(isinstance(v, str) and v for v in outputs)):
            raise MetadataError(f"{source}: metadata outputs {props['outputs']} must be a list of output names; "
                                f"{REEXPORT}")
        threshold = field("threshold", float)
        if not 0.0 < threshold < 1.0:
            raise MetadataError(f"{source}: threshold {threshold} is not a probability in (0, 1); {REEXPORT}")
        known = {"format", "normalization", "input", "preprocessing", "labels", "threshold", "backbone",
                 "pretrained", "dgsnet_version", "input_size", "outputs", "precision", "opset"}
        return cls(
            backbone=field("backbone"), pretrained=props.get("pretrained", ""),
            dgsnet_version=field("dgsnet_version"), input_name=input_name, input_dtype=input_dtype,
            input_layout=layout, input_size=input_size, mean=mean, std=std,
            normalization=str(norm.get("name", "custom")), caller_steps=caller, graph_steps=in_graph,
            outputs=tuple(outputs), labels=(labels[0], labels[1]),
            threshold=threshold, precision=field("precision"), opset=field("opset", int),
            extra={k: v for k, v in props.items() if k not in known})
