"""dgsnet: DGS-Net (distillation-guided gradient surgery) detectors of AI-generated images.

The Python API (README, "Python API"):

    det = dgsnet.load("runs/dgs")               # a finished run directory, or "detector.onnx"
    det.predict(["a.jpg", pil_image, array])    # one record per image, in order
    det.predict_folder("images/")               # every image under the folder

    dgsnet.dgs_objective                        # the stage-2 objective (dgsnet.surgery)
    dgsnet.TrainConfig, dgsnet.train_teacher, dgsnet.train_dgs   # the two training stages
    dgsnet.evaluate_checkpoint                  # `dgsnet eval`
    dgsnet.export_onnx                          # `dgsnet export` (dgsnet_export's export_checkpoint)

Each name is imported on first use (PEP 562 __getattr__), so `import dgsnet` stays cheap and
imports no torch: the torch-free runtime and `dgsnet --help` import this package too.
"""
from dgsnet.version import __version__


# One loader per home module: explicit imports, so scripts/import_cycles.py sees these dependencies.
def _api():
    from dgsnet import api
    return api


def _surgery():
    from dgsnet import surgery
    return surgery


def _train():
    from dgsnet import train
    return train


def _evaluate():
    from dgsnet import evaluate
    return evaluate


def _exporter():
    from dgsnet_export import exporter
    return exporter


# public name -> (home module's loader, the name there)
_LAZY = {
    "load": (_api, "load"),
    "Detector": (_api, "Detector"),
    "DetectorLoadError": (_api, "DetectorLoadError"),
    "ImageInputError": (_api, "ImageInputError"),
    "dgs_objective": (_surgery, "dgs_objective"),
    "TrainConfig": (_train, "TrainConfig"),
    "train_teacher": (_train, "train_teacher"),
    "train_dgs": (_train, "train_dgs"),
    "evaluate_checkpoint": (_evaluate, "evaluate_checkpoint"),
    "export_onnx": (_exporter, "export_checkpoint"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    try:
        loader, attr = _LAZY[name]
    except KeyError:
        # AttributeError (not KeyError) lets `from dgsnet import <submodule>` fall back to importing it
        raise AttributeError(f"module 'dgsnet' has no attribute {name!r}") from None
    value = getattr(loader(), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
