"""An exported detector whose metadata contradicts its graph is refused when it is loaded, and
`dgsnet export` refuses an opset or an --out it cannot serve before the checkpoint is loaded.

Each refusal is exit status 2 with one line on stderr that names the file and the fix, no traceback,
and every file as it was: the .onnx file, an older predictions file, the run directory. The bad
models are built here from a good export (its metadata rewritten) or as small onnx.helper graphs
carrying a good export's metadata, and loaded in real onnxruntime sessions.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dgsnet.cli import main as dgsnet_main
from dgsnet_export import MetadataError, ModelInfo, ModelLoadError, OnnxDetector
from dgsnet_export.runtime.cli import main as onnx_predict_main

# ---------------------------------------------------------------- helpers


def snapshot(*roots) -> dict:
    """{path: (bytes, mtime_ns)} of every file under `roots`, hidden ones included."""
    files = {}
    for root in map(Path, roots):
        for path in ([root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())):
            files[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return files


def props_of(model: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(model)).metadata_props}


def rewrite_metadata(source: Path, target: Path, **changes) -> Path:
    """`source` saved as `target` with metadata keys replaced (dicts and lists stored as JSON)."""
    model = onnx.load(str(source))
    props = props_of(source)
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in changes.items()})
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def small_graph(target: Path, props: dict, *, inputs=(("images", TensorProto.FLOAT, ["N", 3, 224, 224]),),
                body="mean", logits_shape=("N",)) -> Path:
    """A stand-in detector: logits = the mean of each image (or a broken variant), with `props` as metadata.

    body: 'mean' (one logit per image), 'two' (two values per image), 'hidden_two' (the same, through
    a Reshape whose shape is computed from the data), 'doubled' (2N rows for N images); onnxruntime
    cannot know the shapes of the last two before running them. 'gather': an index past the channel
    axis, which fails when run. logits_shape: the declared output shape (None: undeclared).
    """
    x = inputs[0][0]
    nodes, inits = [], []
    if inputs[0][1] == TensorProto.UINT8:
        nodes.append(helper.make_node("Cast", [x], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    rank = len(inputs[0][2])
    axes = list(range(1, rank))
    if body == "mean":
        nodes.append(helper.make_node("ReduceMean", [x], ["logits"], axes=axes, keepdims=0))
    elif body == "two":  # (N, 2): the mean of channels 0 and 1 separately
        inits.append(helper.make_tensor("two", TensorProto.INT64, [2], [0, 1]))
        nodes += [helper.make_node("Gather", [x, "two"], ["g"], axis=1),
                  helper.make_node("ReduceMean", ["g"], ["logits"], axes=[2, 3], keepdims=0)]
    elif body == "hidden_two":  # (N, 2) reshaped by a shape computed from the data: unknown until run
        inits += [helper.make_tensor("two", TensorProto.INT64, [2], [0, 1]),
                  helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                  helper.make_tensor("target", TensorProto.INT64, [2], [-1, 2])]
        nodes += [helper.make_node("Gather", [x, "two"], ["g"], axis=1),
                  helper.make_node("ReduceMean", ["g"], ["m"], axes=[2, 3], keepdims=0),
                  helper.make_node("ReduceMean", [x], ["all"], keepdims=0),
                  helper.make_node("Mul", ["all", "zero"], ["nought"]),
                  helper.make_node("Cast", ["nought"], ["offset"], to=TensorProto.INT64),
                  helper.make_node("Add", ["offset", "target"], ["shape"]),
                  helper.make_node("Reshape", ["m", "shape"], ["logits"])]
    elif body == "doubled":
        nodes += [helper.make_node("ReduceMean", [x], ["m"], axes=axes, keepdims=0),
                  helper.make_node("Concat", ["m", "m"], ["logits"], axis=0)]
    elif body == "gather":
        inits.append(helper.make_tensor("five", TensorProto.INT64, [], [5]))
        nodes += [helper.make_node("Gather", [x, "five"], ["g"], axis=1),
                  helper.make_node("ReduceMean", ["g"], ["logits"], axes=[1, 2], keepdims=0)]
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["probabilities"]))
    graph = helper.make_graph(
        nodes, "stand-in", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None if logits_shape is None else
                                       list(logits_shape)),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, props)
    onnx.save(model, str(target))
    return target


def fix_batch(source: Path, target: Path, batch: int) -> Path:
    """`source` with its batch axis (input and outputs) fixed to `batch`: a static-shape export."""
    model = onnx.load(str(source))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    del model.graph.value_info[:]  # intermediate shapes with the symbolic batch: re-inferred
    onnx.save(model, str(target))
    return target


@pytest.fixture()
def case(fp32_export, photo_dir, tmp_path):
    """(good model copy, images folder, --out holding older predictions) in one folder to snapshot."""
    model = tmp_path / "good.onnx"
    shutil.copyfile(fp32_export[0], model)
    images = tmp_path / "imgs"
    shutil.copytree(photo_dir, images)
    out = tmp_path / "preds.jsonl"
    out.write_text('{"path": "old.png", "logit": 1.0}\n')
    return model, images, out


def onnx_predict(argv, capsys):
    code = onnx_predict_main([str(a) for a in argv] + ["--provider", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def refused_model(code: int, err: str, model: Path, *fragments) -> None:
    """Exit 2, one line naming the model and the fix, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert str(model) in err, err
    assert "re-export" in err and "dgsnet export" in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------- metadata that contradicts itself or the graph

NO_PATCH_SELECTION = {"caller": ["normalize"], "in_graph": []}

METADATA_CASES = {
    # the tiles patch selection makes are 224x224: a bigger input_size cannot be fed
    "input_size_vs_patch_selection": ({"input_size": "256"}, "contradicts its own dgs-patch-selection"),
    # without patch selection, input_size is what the caller feeds: the graph takes 224
    "input_size_vs_graph": ({"input_size": "256", "preprocessing": NO_PATCH_SELECTION},
                            "input_size is 256, but the graph input 'images' is (N, 3, 224, 224)"),
    "input_size_zero": ({"input_size": "0"}, "input_size 0"),
    "input_name_not_in_graph": ({"input": {"name": "pixels", "dtype": "float32", "layout": "NCHW"}},
                                "names the input 'pixels', but the graph's input is 'images'"),
    "dtype_uint8_for_a_float_graph": ({"input": {"name": "images", "dtype": "uint8", "layout": "NHWC"},
                                       "preprocessing": {"caller": ["dgs-patch-selection"], "in_graph": ["normalize"]}},
                                      "is uint8, but the graph takes float32"),
    "outputs_the_graph_lacks": ({"outputs": ["logits", "scores"]}, "outputs ['scores'] that the graph does not have"),
    "outputs_without_logits": ({"outputs": ["probabilities"]}, "do not include 'logits'"),
    "outputs_not_a_list": ({"outputs": '"logits"'}, "must be a list of output names"),
    "threshold_not_a_number": ({"threshold": "high"}, "'threshold'='high' is malformed"),
    "threshold_above_1": ({"threshold": "1.5"}, "threshold 1.5 is not a probability"),
    "threshold_nan": ({"threshold": "nan"}, "threshold nan is not a probability"),
    "mean_of_2": ({"normalization": {"name": "x", "mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "3 means and 3 stds"),
    "std_of_4": ({"normalization": {"name": "x", "mean": [0.5] * 3, "std": [0.2] * 4}}, "3 means and 3 stds"),
    "std_zero": ({"normalization": {"name": "x", "mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}}, "std > 0"),
    "labels_a_string": ({"labels": '"ab"'}, 'labels "ab" must be a list of 2'),  # tuple("ab") has 2 items too
    "labels_one": ({"labels": ["real"]}, "must be a list of 2"),
    "labels_numbers": ({"labels": [0, 1]}, "must be a list of 2"),
    "labels_equal": ({"labels": ["real", "real"]}, "must be a list of 2 different"),
    "labels_a_number": ({"labels": 5}, "must be a list of 2"),  # tuple(5) raised TypeError: a traceback
    "normalised_twice": ({"preprocessing": {"caller": ["dgs-patch-selection", "normalize"], "in_graph": ["normalize"]}},
                         "normalised by caller and graph"),
    "normalised_by_nobody": ({"preprocessing": {"caller": ["dgs-patch-selection"], "in_graph": []}},
                             "normalised by nobody"),
}


@pytest.mark.parametrize("name", sorted(METADATA_CASES))
def test_metadata_contradictions_are_refused_at_load(case, capsys, name):
    model, images, out = case
    changes, fragment = METADATA_CASES[name]
    bad = rewrite_metadata(model, model.with_name(f"{name}.onnx"), **changes)
    before = snapshot(out.parent)
    code, err, stdout = onnx_predict([bad, images, "--out", out], capsys)
    refused_model(code, err, bad, fragment)
    assert stdout == ""
    assert snapshot(out.parent) == before  # the model and the old predictions as they were


GRAPH_CASES = {
    "two_inputs": (dict(inputs=(("images", TensorProto.FLOAT, ["N", 3, 224, 224]),
                                ("scale", TensorProto.FLOAT, [1]))), "2 inputs ['images', 'scale']"),
    "spatial_256_vs_metadata_224": (dict(inputs=(("images", TensorProto.FLOAT, ["N", 3, 256, 256]),)),
                                    "input_size is 224, but the graph input 'images' is (N, 3, 256, 256)"),
    "nhwc_graph_nchw_metadata": (dict(inputs=(("images", TensorProto.FLOAT, ["N", 224, 224, 3]),)),
                                 "(N, 224, 224, 3): laid out NHWC"),
    "four_channels": (dict(inputs=(("images", TensorProto.FLOAT, ["N", 4, 224, 224]),)), "4 channels"),
    "flat_input": (dict(inputs=(("images", TensorProto.FLOAT, ["N", 150528]),)), "(N, 150528), 2 dims"),
    "uint8_graph_float32_metadata": (dict(inputs=(("images", TensorProto.UINT8, ["N", 3, 224, 224]),)),
                                     "is float32, but the graph takes uint8"),
    "two_values_per_image": (dict(body="two", logits_shape=("N", 2)), "(N, 2): 2 values per image"),
    "fixed_rows_for_a_dynamic_batch": (dict(logits_shape=(1,)), "1 rows for input (N, 3, 224, 224)"),
    # onnxruntime cannot tell these from the graph: the test batch run at load shows them
    "rows_differ_at_run_time": (dict(body="doubled", logits_shape=None),
                                "logits of shape (6,) for a batch of 3 images"),
    "two_values_at_run_time": (dict(body="hidden_two", logits_shape=None), "2 values per image (shape (3, 2))"),
    "fails_when_run": (dict(body="gather"), "onnxruntime fails on a test batch of 3 (3, 3, 224, 224)"),
}


@pytest.mark.parametrize("name", sorted(GRAPH_CASES))
def test_graphs_that_contradict_the_metadata_are_refused_at_load(case, capsys, name):
    model, images, out = case
    kwargs, fragment = GRAPH_CASES[name]
    bad = small_graph(out.parent / f"{name}.onnx", props_of(model), **kwargs)
    ort.InferenceSession(str(bad), providers=["CPUExecutionProvider"])  # a valid ONNX file: only dgsnet objects
    before = snapshot(out.parent)
    code, err, stdout = onnx_predict([bad, images, "--out", out], capsys)
    refused_model(code, err, bad, fragment)
    assert stdout == ""
    assert snapshot(out.parent) == before


def test_the_stand_in_graph_itself_is_accepted(case, capsys):
    """The small graph with consistent metadata loads and scores: the refusals above come from the
    contradictions, not from the stand-in."""
    model, images, out = case
    good = small_graph(out.parent / "stand_in.onnx", props_of(model))
    code, err, _ = onnx_predict([good, images, "--out", out], capsys)
    assert code == 0, err
    assert len(out.read_text().splitlines()) == len(list(images.iterdir()))


def test_errors_are_raised_by_the_loader_before_any_image(case, tmp_path):
    """The API raises the same errors: OnnxDetector() itself refuses, no image needed."""
    model, _, out = case
    with pytest.raises(MetadataError, match="labels"):
        OnnxDetector(rewrite_metadata(model, tmp_path / "l.onnx", labels='"ab"'), provider="cpu")
    with pytest.raises(ModelLoadError, match="2 values per image"):
        OnnxDetector(small_graph(tmp_path / "t.onnx", props_of(model), body="hidden_two", logits_shape=None),
                     provider="cpu")
    # the test batch follows a small --batch: a graph doubling its rows is caught at batch 1 too
    with pytest.raises(ModelLoadError, match=r"shape \(2,\) for a batch of 1"):
        OnnxDetector(small_graph(tmp_path / "d.onnx", props_of(model), body="doubled", logits_shape=None),
                     provider="cpu", max_batch=1)


def test_metadata_reader_accepts_what_the_exporter_writes(fp32_export):
    """The stricter reader still reads a real export (labels, outputs, normalisation as written)."""
    info = ModelInfo.from_props(props_of(fp32_export[0]))
    assert info.labels == ("real", "generated") and info.outputs == ("logits", "probabilities")
    assert info.input_size == 224 and min(info.std) > 0


# ---------------------------------------------------------------- a fixed batch size is handled

@pytest.mark.parametrize("fixed", [1, 4])
def test_a_fixed_batch_graph_is_fed_groups_of_its_size(case, capsys, fixed):
    model, images, out = case
    static = fix_batch(model, out.parent / f"batch{fixed}.onnx", fixed)
    session = ort.InferenceSession(str(static), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == fixed
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # fed another batch, onnxruntime refuses
        session.run(["logits"], {"images": np.zeros((3, 3, 224, 224), np.float32)})

    code, err, _ = onnx_predict([model, images, "--out", out, "--batch", "3"], capsys)
    assert code == 0, err
    dynamic = [json.loads(line) for line in out.read_text().splitlines()]
    # --batch 3: with a fixed batch of 4, every group of 3 is padded; with 1, split in three
    code, err, _ = onnx_predict([static, images, "--out", out, "--batch", "3"], capsys)
    assert code == 0, err
    assert f"takes batches of exactly {fixed} images" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [r["path"] for r in dynamic]
    assert len(records) == len(list(images.iterdir()))
    np.testing.assert_allclose([r["logit"] for r in records], [r["logit"] for r in dynamic], atol=1e-5, rtol=0)
    assert [r["label"] for r in records] == [r["label"] for r in dynamic]
    assert np.ptp([r["logit"] for r in records]) > 0.05  # different photos, different scores: no padding leak


def test_fixed_batch_logits_keep_order_with_a_partial_group(case):
    """Five images through a fixed batch of 4: one full group and one padded with copies of its last."""
    model, _, _ = case
    static = OnnxDetector(fix_batch(model, model.with_name("b4.onnx"), 4), provider="cpu")
    dynamic = OnnxDetector(model, provider="cpu")
    assert static.batch_limit == 4 and dynamic.batch_limit is None
    batch = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(static.logits(batch), dynamic.logits(batch), atol=1e-5, rtol=0)
    assert static.logits(batch[:2]).shape == (2,)


# ---------------------------------------------------------------- dgsnet export: opset and --out

@pytest.fixture()
def no_export(monkeypatch):
    """A refusal must come before the checkpoint is loaded or the export starts."""
    import dgsnet.predict
    import dgsnet_export.exporter

    def fail(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the arguments were checked")

    monkeypatch.setattr(dgsnet.predict, "load_detector", fail)
    monkeypatch.setattr(dgsnet_export.exporter, "export_checkpoint", fail)
    monkeypatch.setattr(dgsnet_export.exporter, "export_detector", fail)


def dgsnet(argv, capsys):
    code = dgsnet_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused_export(code: int, err: str, *fragments) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dgsnet export: error:"), err
    for fragment in fragments:
        assert str(fragment) in err, (fragment, err)


def _opsets():
    from dgsnet_export.exporter import opset_range

    low, high = opset_range("auto")
    return {"99": ("auto", 99), "zero": ("auto", 0), "below_the_graph": ("auto", low - 1),
            "above_auto": ("auto", high + 1), "above_torchscript": ("torchscript", opset_range("torchscript")[1] + 1)}


@pytest.mark.parametrize("name", ["99", "zero", "below_the_graph", "above_auto", "above_torchscript"])
def test_export_refuses_an_opset_it_cannot_write(run_dir, tmp_path, capsys, no_export, name):
    from dgsnet_export.exporter import opset_range

    exporter, opset = _opsets()[name]
    out = tmp_path / "det.onnx"
    before = snapshot(tmp_path)
    code, err = dgsnet(["export", "--ckpt", run_dir, "--out", out, "--opset", opset, "--exporter", exporter], capsys)
    low, high = opset_range(exporter)
    refused_export(code, err, f"--opset {opset}:", f"opsets {low} to {high}", "choose one in that range")
    assert snapshot(tmp_path) == before and not out.exists()


def test_opset_range_comes_from_the_installed_packages():
    import onnx.defs
    from torch.onnx import _constants

    from dgsnet_export.exporter import DEFAULT_OPSET, check_opset, opset_range

    low, high = opset_range("auto")
    assert low <= DEFAULT_OPSET <= high <= onnx.defs.onnx_opset_version()
    assert opset_range("torchscript")[1] == min(_constants.ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())
    assert low == 9  # Erf (GELU) arrived in opset 9, Expand in 8
    assert check_opset(str(DEFAULT_OPSET)) == DEFAULT_OPSET
    for bad in (True, 17.5, "17a", None):
        with pytest.raises(ValueError, match="choose one in that range"):
            check_opset(bad, name="opset")


@pytest.mark.parametrize("exporter,end", [("torchscript", 0), ("torchscript", 1), ("dynamo", 1)])
def test_the_ends_of_the_opset_range_really_export(detector, tmp_path, exporter, end):
    """The range is not too narrow: each exporter writes (and verifies) a detector at its bounds."""
    from dgsnet_export.exporter import export_detector, opset_range

    opset = opset_range(exporter)[end]
    report = export_detector(detector, tmp_path / "d.onnx", metadata={"backbone": "dgs-tiny"}, opset=opset,
                             exporter=exporter)
    assert report.opset == opset and report.exporter == exporter
    assert onnx.load(str(tmp_path / "d.onnx")).opset_import[0].version == opset


def test_export_detector_refuses_the_opset_before_exporting(detector, tmp_path):
    from dgsnet_export.exporter import export_detector

    with pytest.raises(ValueError, match="opset 99: .*choose one in that range"):
        export_detector(detector, tmp_path / "d.onnx", metadata={"backbone": "dgs-tiny"}, opset=99)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["results", "det.onnx"])
def test_export_refuses_an_existing_directory_as_out(run_dir, tmp_path, capsys, no_export, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "keep.txt").write_text("kept")
    before = snapshot(tmp_path)
    code, err = dgsnet(["export", "--ckpt", run_dir, "--out", folder], capsys)
    refused_export(code, err, folder, "existing directory")
    assert snapshot(tmp_path) == before and folder.is_dir()


def test_export_refuses_out_under_a_regular_file(run_dir, tmp_path, capsys, no_export):
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "det.onnx"
    before = snapshot(tmp_path)
    code, err = dgsnet(["export", "--ckpt", run_dir, "--out", out], capsys)
    refused_export(code, err, out, f"{blocker} is a file, not a folder", "choose another --out")
    assert snapshot(tmp_path) == before


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot create files in: a chmod 555 folder, or as root (who ignores the
    bits) sysfs, where not even root can create a file."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no folder here refuses new files")


def test_export_refuses_out_in_a_read_only_folder(run_dir, tmp_path, capsys, no_export):
    folder = _read_only_folder(tmp_path)
    out = folder / "new" / "det.onnx"  # a missing folder under it: where export would mkdir
    before = snapshot(run_dir)
    try:
        code, err = dgsnet(["export", "--ckpt", run_dir, "--out", out], capsys)
    finally:
        (tmp_path / "read-only").chmod(0o755)
    refused_export(code, err, out, f"cannot write in {folder}", "choose a writable folder")
    assert snapshot(run_dir) == before and not out.exists() and not out.parent.exists()


def test_a_new_folder_for_out_is_not_refused(tmp_path, monkeypatch):
    """Export creates missing folders under a writable one: only impossible places are refused."""
    from dgsnet.cli.deploy import _check_out_folder

    _check_out_folder(tmp_path / "a" / "b" / "det.onnx")
    monkeypatch.chdir(tmp_path)
    _check_out_folder(Path("det.onnx"))  # a bare name: the working directory
    assert list(tmp_path.iterdir()) == []  # the write test left nothing behind
