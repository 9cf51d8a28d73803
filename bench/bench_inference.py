"""Inference throughput of an exported detector: onnxruntime against torch eager, same weights, same inputs.

For each model (random-initialised open_clip backbones, LoRA merged, as
`dgsnet export` writes them) and batch size, images/s of
  torch eager          the Detector module (baseline of the ratio column)
  onnxruntime CPU      the verified float32 export
and on a CUDA device also onnxruntime CUDA (float32) and TensorRT (float16)
where this onnxruntime has those providers. Model inputs are pre-normalised
224x224 tiles: the detector alone is timed; the numpy patch selection every
image also needs is timed separately (meta "preprocess_images_per_s").

End-to-end rows (`dgsnet export --end-to-end`), one raw photo at a time at two sizes, side by side:
  numpy preprocessing + ONNX   dgsnet's Preprocess (numpy) then the encoder export (baseline)
  end-to-end ONNX              the one-file detector: patch selection inside the graph
column x_numpy_path (meta "end_to_end_rows"; CPU onnxruntime, the same threads); with
--only-end-to-end they are the rows of bench_inference_end_to_end.json and nothing else runs.
On a GPU, onnxruntime's times include copying the batch to the device
(session.run takes host arrays); torch's input is already there.

    python bench/bench_inference.py [--quick] [--models dgs-small,dgs-tiny] [--batches 1,16] [--only-end-to-end]
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from common import base_parser, markdown_table, resolve_device, results_dir, time_call, write_results


def build_detector(model_name: str):
    from dgsnet.models import BackboneSpec, DGSNetModel

    return DGSNetModel(BackboneSpec(model=model_name, pretrained=None, init_seed=0)).detector().eval()


def torch_runner(detector, batch: np.ndarray, device, half: bool = False):
    import torch

    model = detector.to(device)
    x = torch.from_numpy(batch).to(device)
    if half:
        model, x = model.half(), x.half()

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def ort_runner(path: str, batch: np.ndarray, provider: str, threads: int, max_batch: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if provider == "TensorrtExecutionProvider":
        shape = "x".join(str(v) for v in batch.shape[1:])
        providers = [(provider, {"trt_fp16_enable": "True",
                                 "trt_profile_min_shapes": f"images:1x{shape}",
                                 "trt_profile_opt_shapes": f"images:{max_batch}x{shape}",
                                 "trt_profile_max_shapes": f"images:{max_batch}x{shape}"}),
                     "CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=providers)
    if session.get_providers()[0] != provider:
        return None  # the provider could not start: no row rather than a mislabelled one
    feed = {"images": batch}
    return lambda: session.run(["logits"], feed)


def preprocess_rate(repeats: int) -> float:
    """Images/s of the caller-side preprocessing (patch selection + normalisation) on a 512x512 photo."""
    import time

    import skimage.data

    from dgsnet.image.preprocess import Preprocess

    image, prep = np.asarray(skimage.data.astronaut()), Preprocess("imagenet")
    prep(image)
    start = time.perf_counter()
    for _ in range(repeats):
        prep(image)
    return repeats / (time.perf_counter() - start)


def end_to_end_rows(detector, name: str, folder: str, threads: int, repeats: int, min_seconds: float,
                    rounds: int) -> list[dict]:
    """Images/s of numpy preprocessing + the encoder export against the end-to-end export, one photo at a time."""
    import onnxruntime as ort
    import skimage.data
    from PIL import Image

    from dgsnet.image.preprocess import Preprocess
    from dgsnet_export.exporter import export_end_to_end

    photo = np.asarray(skimage.data.astronaut())
    images = {"512x512": photo, "1920x1080": np.asarray(Image.fromarray(photo).resize((1920, 1080), Image.BICUBIC))}
    path = os.path.join(folder, f"{name}-e2e.onnx")
    # the export verifies itself; a short corpus here (tests/export/test_end_to_end.py checks the full one)
    report = export_end_to_end(detector, path, metadata={"backbone": name}, corpus=list(images.items()))
    encoder = os.path.join(folder, f"{name}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    plain = ort.InferenceSession(encoder, options, providers=["CPUExecutionProvider"])
    joined = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    prep = Preprocess("imagenet")
    rows = []
    for size, image in images.items():
        runners = [("numpy preprocessing + ONNX", lambda im=image: plain.run(["logits"], {"images": prep(im)[None]})),
                   ("end-to-end ONNX", lambda im=image: joined.run(["logits"], {"image": im}))]
        (a,), (b,) = runners[0][1](), runners[1][1]()
        best = [float("inf")] * len(runners)
        for _ in range(rounds):  # turns, as the detector rows: shared-CPU bursts hit both
            for i, (_, run) in enumerate(runners):
                best[i] = min(best[i], time_call(run, "cpu", warmup=2, repeats=repeats, min_seconds=min_seconds))
        for (engine, _), seconds in zip(runners, best):
            rows.append({"model": name, "image": size, "engine": engine, "ms_per_image": seconds * 1e3,
                         "images_per_s": 1 / seconds, "x_numpy_path": best[0] / seconds,
                         "abs_logit_difference": float(abs(a[0] - b[0]))})
    print(f"# {name}: end-to-end export verified ({report.end_to_end['identical']}/"
          f"{report.end_to_end['images']} images select numpy's patches)", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--models", default="dgs-small,dgs-tiny", help="comma-separated open_clip models")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime "
                        "(default: torch's setting, applied to both)")
    parser.add_argument("--rounds", type=int, default=5, help="turns each engine takes; its best median counts")
    parser.add_argument("--only-end-to-end", action="store_true",
                        help="only the end-to-end rows, written to bench_inference_end_to_end.json (the "
                             "detector rows' committed file stays as it is)")
    args = parser.parse_args(argv)
    import onnxruntime as ort
    import torch

    from dgsnet_export.exporter import export_detector

    models = ["dgs-tiny"] if args.quick else [m for m in args.models.split(",") if m]
    batches = [1, 4] if args.quick else [int(b) for b in args.batches.split(",") if b]
    repeats = args.repeats or (3 if args.quick else 10)
    min_seconds = 0.0 if args.quick else 0.5
    rounds = 1 if args.quick else args.rounds
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    available = set(ort.get_available_providers())
    load_before = os.getloadavg()[0]  # the CPU may be shared: recorded so noisy numbers can be recognised
    rows, logit_errors, e2e_rows = [], {}, []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for name in models:
            detector = build_detector(name)
            path = os.path.join(tmp, f"{name}.onnx")
            report = export_detector(detector, path, metadata={"backbone": name})
            params = sum(p.numel() for p in detector.parameters())
            for batch_size in ([] if args.only_end_to_end else batches):
                batch = np.random.default_rng(batch_size).standard_normal(
                    (batch_size, 3, 224, 224)).astype(np.float32)
                runners = [("torch eager", "float32", torch_runner(detector, batch, device))]
                if device.type == "cuda":
                    runners.append(("torch eager", "float16", torch_runner(build_detector(name), batch, device,
                                                                           half=True)))
                    for provider, label, precision in (("CUDAExecutionProvider", "onnxruntime CUDA", "float32"),
                                                       ("TensorrtExecutionProvider", "onnxruntime TensorRT",
                                                        "float16")):
                        if provider in available:
                            runners.append((label, precision, ort_runner(path, batch, provider, threads,
                                                                         max(batches))))
                else:
                    runners.append(("onnxruntime CPU", "float32",
                                    ort_runner(path, batch, "CPUExecutionProvider", threads, max(batches))))
                runners = [r for r in runners if r[2] is not None]
                # The engines take turns, `rounds` times, and each keeps its best median: the CPU is
                # shared, and a burst of other load then cannot land on one engine only.
                best = [float("inf")] * len(runners)
                for _ in range(rounds):
                    for i, (_, _, run) in enumerate(runners):
                        best[i] = min(best[i], time_call(run, device, warmup=2, repeats=repeats,
                                                         min_seconds=min_seconds))
                baseline = None
                for (engine, precision, _), seconds in zip(runners, best):
                    rate = batch_size / seconds
                    baseline = baseline or rate
                    rows.append({"model": name, "params_M": params / 1e6, "batch": batch_size, "engine": engine,
                                 "precision": precision, "ms_per_batch": seconds * 1e3, "images_per_s": rate,
                                 "x_torch_eager": rate / baseline})
                detector.to("cpu")
            logit_errors[name] = report.max_abs_error
            print(f"# {name}: export verified, max |logit error| {report.max_abs_error:.2g}", file=sys.stderr)
            e2e_rows += end_to_end_rows(detector, name, tmp, threads, repeats, min_seconds, rounds)
    meta = {"device": str(device), "threads": threads, "rounds": rounds, "repeats": repeats,
            "onnxruntime": ort.__version__,
            "onnxruntime_providers": sorted(available), "baseline": "torch eager float32",
            "preprocess_images_per_s": preprocess_rate(3 if args.quick else 20),
            "load_average_1m": [load_before, os.getloadavg()[0]],
            "max_abs_logit_error": logit_errors,  # the export's own check: |onnx - torch| on its inputs
            "end_to_end_rows": e2e_rows,
            "note": "detector forward only, on pre-normalised 224x224 inputs; random-initialised weights"}
    if args.only_end_to_end:
        rows, meta = e2e_rows, {key: meta[key] for key in ("device", "threads", "rounds", "repeats", "onnxruntime",
                                                             "preprocess_images_per_s", "load_average_1m")}
        # numpy's BLAS threads (OpenBLAS spin-waits when the CPU is shared: run with OPENBLAS_NUM_THREADS=threads)
        meta["openblas_num_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
        meta["note"] = ("one raw photo at a time, side by side: dgsnet's numpy preprocessing + the encoder "
                        "export vs the end-to-end export (patch selection in the graph); random-initialised weights")
    out = write_results(results_dir(args, device), "bench_inference_end_to_end" if args.only_end_to_end
                        else "bench_inference", rows, meta)
    if not args.only_end_to_end:
        print(markdown_table(rows, ["model", "params_M", "batch", "engine", "precision", "ms_per_batch",
                                    "images_per_s", "x_torch_eager"]))
    print("\n" + markdown_table(e2e_rows, ["model", "image", "engine", "ms_per_image", "images_per_s",
                                           "x_numpy_path"]))
    print(f"\npreprocessing (numpy patch selection + normalise, 512x512 photo): "
          f"{meta['preprocess_images_per_s']:.1f} images/s; device {device}, {threads} threads; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
