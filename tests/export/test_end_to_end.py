"""`dgsnet export --end-to-end` and `--triton-repo`: patch selection inside the ONNX graph, checked against
dgsnet.image.preprocess (the specification) through real onnxruntime sessions, and the Triton model
repository parsed with the model-config protobuf tritonclient ships."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dgsnet.image import preprocess as spec
from dgsnet_export.exporter import ExportError, export_end_to_end, tensorrt_issues, write_triton_repo
from dgsnet_export.exporter import end_to_end as e2e
from dgsnet_export.runtime import MetadataError, ModelInfo, OnnxDetector

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ["logits", "probabilities", "patch_indices", "patch_grid"]


def _small_corpus():
    """The verification corpus without its 4000 px image (that one is checked by the one-image export)."""
    return [(name, image) for name, image in e2e.verification_corpus() if image.shape[0] < 1000]


@pytest.fixture(scope="module")
def single(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "detector-e2e.onnx"
    return path, export_end_to_end(detector, path, metadata={"backbone": "dgs-tiny"})


@pytest.fixture(scope="module")
def batched(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "detector-e2e-batched.onnx"
    return path, export_end_to_end(detector, path, metadata={"backbone": "dgs-tiny"}, batched=True,
                                   corpus=_small_corpus())


def _fresh_images():
    """Images the export's verification never saw: edge sizes (exactly 224, one patch row, 1x1, odd)."""
    rng = np.random.default_rng(7)
    import skimage.data

    photo = np.asarray(skimage.data.astronaut())
    return [("224x224", photo[100:324, 50:274]), ("one patch row 2000x33", np.tile(photo[:33], (1, 4, 1))[:, :2000]),
            ("33x1500", np.ascontiguousarray(np.tile(photo[:, :33], (3, 1, 1))[:1500])),
            ("1x1", photo[:1, :1]), ("225x231 noise", rng.integers(0, 256, (231, 225, 3), dtype=np.uint8)),
            ("padded 150x90 photo", photo[200:290, 300:450]),
            ("greyscale 97x301", np.repeat(np.asarray(skimage.data.camera())[:301, :97, None], 3, 2))]


def test_export_verifies_against_numpy_on_the_corpus(single):
    path, report = single
    checked = report.end_to_end
    corpus = e2e.verification_corpus()
    assert checked["images"] == len(corpus) >= 30 and checked["largest"] == "4000x2667"
    # every image either selects numpy's patches or differs by a counted float32 tie, rare
    assert checked["identical"] + len(checked["ties"]) == checked["images"]
    assert len(checked["ties"]) <= checked["images"] // 10
    assert checked["max_prob_error"] <= e2e.PROB_TOL and checked["max_prob_error_ties"] <= e2e.TIE_PROB_TOL
    model = onnx.load(str(path))
    assert json.loads(model.metadata_props[[p.key for p in model.metadata_props].index(
        "verification_end_to_end")].value)["identical"] == checked["identical"]
    assert tensorrt_issues(model) == [] and {n.domain for n in model.graph.node} == {""}
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in dims[:2]] == ["height", "width"] and dims[2].dim_value == 3
    assert [o.name for o in model.graph.output] == OUTPUTS
    assert "end-to-end (one image): " in report.summary()


def test_graph_selects_numpys_patches_on_images_it_was_not_verified_on(single, fp32_export):
    """patch_indices = numpy's 24 low then 25 high, patch_grid = the prepared image's grid, and the
    probability = numpy selection + the plain export (another file of the same detector)."""
    path, _ = single
    e2e_session = e2e._session(path)
    plain = OnnxDetector(fp32_export[0], provider="cpu")
    for name, image in _fresh_images():
        logits, probs, indices, grid = e2e_session.run(OUTPUTS, {"image": image})
        low, high = e2e.numpy_low_high(image)
        assert indices.tolist() == low.tolist() + high.tolist(), name
        prepared = spec.prepare_image(image)
        assert grid.tolist() == [prepared.shape[0] // 32, prepared.shape[1] // 32], name
        expected = plain.logits(plain.preprocess(image)[None])[0]
        assert abs(float(logits[0]) - expected) <= 1e-4, name
        assert abs(float(probs[0]) - 1 / (1 + np.exp(-expected))) <= 1e-5, name


def _joined(fp32_export, rank_bits):
    from dgsnet_export.exporter.spec import normalization_spec

    norm = normalization_spec("imagenet")
    pre = e2e.preprocessing_graph(norm, batched=False, opset=17, rank_bits=rank_bits)
    return e2e.join_encoder(pre, onnx.load(str(fp32_export[0])), batched=False), norm


def test_verification_counts_float32_ties_and_fails_a_graph_that_ranks_wrongly(fp32_export):
    """On a 2^-24 grid float32 noise splits exact ties. Mirrored noise (49 patches: all kept, only the
    low/high split moves) is counted as a tie; a repeated checkerboard, whose swapped patch moves this
    detector's probability beyond 1e-3, fails; so does a 1-bit grid, which ranks by raster index."""
    from dgsnet_export.exporter import ExportVerificationError

    corpus = dict(e2e.verification_corpus())
    names = ("uniform noise 50x40 (mirror-padded)", "chelsea 451x300", "checkerboard 3 px 333x222")
    noise, photo, board = [(name, corpus[name]) for name in names]
    model, norm = _joined(fp32_export, rank_bits=24)
    report = e2e.verify_end_to_end(model, fp32_export[0], norm, batched=False, corpus=[noise, photo])
    assert report["identical"] == 1 and [t["image"] for t in report["ties"]] == [noise[0]]
    assert report["ties"][0]["entropy_gap_bits"] <= 1e-6 and report["ties"][0]["prob_error"] <= e2e.PROB_TOL
    with pytest.raises(ExportVerificationError, match=r"checkerboard 3 px 333x222: .*\(allowed 0.001\)"):
        e2e.verify_end_to_end(model, fp32_export[0], norm, batched=False, corpus=[board])
    model, norm = _joined(fp32_export, rank_bits=0)
    with pytest.raises(ExportVerificationError, match="chelsea 451x300: .* bits apart"):
        e2e.verify_end_to_end(model, fp32_export[0], norm, batched=False, corpus=[photo])


def test_batched_variant_scores_each_image_as_the_one_image_graph(single, batched):
    one, many = e2e._session(single[0]), e2e._session(batched[0])
    assert batched[1].end_to_end["batched"] and batched[1].end_to_end["identical"] + \
        len(batched[1].end_to_end["ties"]) == len(_small_corpus())
    import skimage.data

    photo = np.asarray(skimage.data.coffee())
    images = np.stack([photo[:300, :350], photo[100:400, 200:550], photo[50:350, 0:350]])
    logits, probs, indices, grid = many.run(OUTPUTS, {"images": images})
    assert logits.shape == probs.shape == (3,) and indices.shape == (3, 49) and grid.tolist() == [[9, 10]] * 3
    for k, image in enumerate(images):
        l1, _, i1, g1 = one.run(OUTPUTS, {"image": image})
        assert indices[k].tolist() == i1.tolist() and g1.tolist() == [9, 10]
        assert abs(float(logits[k]) - float(l1[0])) <= 1e-4
    assert np.ptp(logits) > 0.01  # the three crops score differently: the comparison has teeth


def test_runtime_and_dgsnet_predict_score_end_to_end_files_like_the_numpy_path(single, batched, fp32_export,
                                                                               photo_dir, tmp_path):
    from dgsnet_export.runtime.cli import main as predict_main

    plain = {r["path"]: r for r in OnnxDetector(fp32_export[0]).predict_paths([photo_dir])}
    for path in (single[0], batched[0]):
        detector = OnnxDetector(path)
        assert detector.info.end_to_end and detector.info.batched_images == (path == batched[0])
        records = list(detector.predict_paths([photo_dir], batch_size=4))
        assert len(records) == len(plain) == 6
        for record in records:
            assert abs(record["probability"] - plain[record["path"]]["probability"]) <= 1e-4
            assert record["label"] == plain[record["path"]]["label"]
        out = tmp_path / f"{path.stem}.jsonl"
        assert predict_main([str(path), str(photo_dir), "--out", str(out), "--no-progress"]) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["path"]: round(r["probability"], 6) for r in lines} == \
               {r["path"]: round(r["probability"], 6) for r in records}
    with pytest.raises(ValueError, match="--patch-order raster"):
        OnnxDetector(single[0], patch_order="shuffle")


def test_score_images_returns_the_graphs_patch_selection(single):
    import skimage.data

    detector = OnnxDetector(single[0])
    photo, tiny = np.asarray(skimage.data.chelsea()), np.asarray(skimage.data.chelsea())[:40, :70]
    rows = detector.score_images([photo, tiny, np.zeros((4, 4), np.float32)])
    for row, image in zip(rows[:2], (photo, tiny)):
        assert row["patches"] == spec.patch_selection(image)  # low, high, grid, padded: numpy's
    assert rows[1]["patches"].padded and not rows[0]["patches"].padded
    assert "uint8" in rows[2]["error"]


def test_end_to_end_runtime_runs_with_torch_blocked(single, photo_dir):
    sys.path.insert(0, str(ROOT / "tests" / "image"))
    from test_torch_free import BLOCK_TORCH

    code = BLOCK_TORCH + (
        "from dgsnet_export.runtime import OnnxDetector\n"
        f"records = list(OnnxDetector({str(single[0])!r}).predict_paths([{str(photo_dir)!r}]))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx'))\n"
        "print(len(records), bad)\n")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "export")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "6 []"


def test_metadata_of_an_end_to_end_file_must_be_consistent(single):
    model = onnx.load(str(single[0]))
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_props(props)
    assert info.end_to_end and not info.batched_images and info.input_layout == "HWC"
    steps = json.loads(props["preprocessing"])
    broken = {**props, "preprocessing": json.dumps({"caller": ["normalize"], "in_graph": steps["in_graph"][:1]})}
    with pytest.raises(MetadataError, match="patch selection in the graph needs normalisation there too"):
        ModelInfo.from_props(broken)
    with pytest.raises(MetadataError, match="uint8 HWC or NHWC"):
        ModelInfo.from_props({**props, "input": json.dumps({"name": "image", "dtype": "float32",
                                                            "layout": "HWC"})})


# ---------------------------------------------------------------- Triton

def _parse_config(folder):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _graph_io(path, batched):
    model = onnx.load(str(path))
    names = {1: "TYPE_FP32", 2: "TYPE_UINT8", 7: "TYPE_INT64"}

    def rows(values):
        out = []
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            out.append((v.name, names[v.type.tensor_type.elem_type], dims[1:] if batched else dims))
        return out

    return rows(model.graph.input), rows(model.graph.output)


@pytest.mark.parametrize("variant,precision", [("single", None), ("batched", None), ("batched", "fp16")])
def test_triton_config_parses_and_matches_the_onnx_file(variant, precision, single, batched, tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    path = (single if variant == "single" else batched)[0]
    options = {"precision": precision} if precision else {}
    folder = write_triton_repo(path, tmp_path / "repo", name="dgsnet", max_batch_size=8, **options)
    assert folder == tmp_path / "repo" / "dgsnet"
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()
    config = _parse_config(folder)
    inputs, outputs = _graph_io(path, variant == "batched")
    assert config.name == "dgsnet" and config.backend == "onnxruntime"
    got_in = [(i.name, pb.DataType.Name(i.data_type), list(i.dims)) for i in config.input]
    got_out = [(o.name, pb.DataType.Name(o.data_type), list(o.dims) if not o.HasField("reshape") else [])
               for o in config.output]
    assert got_in == inputs and got_out == outputs
    if variant == "single":
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert got_in == [("image", "TYPE_UINT8", [-1, -1, 3])]
    else:
        assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert [list(o.reshape.shape) for o in config.output if o.HasField("reshape")] == [[], []]
        assert list(config.output[0].dims) == [1]  # (N,) logits: one per request, reshaped
    (group,) = config.instance_group
    assert group.count == 1 and group.kind == pb.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    # FP32 unless asked: FP16 would run the graph's patch selection (DFT, entropy, TopK) in half precision
    assert accelerator.name == "tensorrt" and \
        accelerator.parameters["precision_mode"] == ("FP16" if precision == "fp16" else "FP32")
    assert config.parameters["intra_op_thread_count"].string_value == "0"


def test_triton_repo_is_replaced_whole_and_refuses_plain_exports(single, fp32_export, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repo(single[0], repo, name="m")
    (repo / "m" / "2").mkdir()
    (repo / "m" / "stale.txt").write_text("old")
    write_triton_repo(single[0], repo, name="m")
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or swap folders left
    with pytest.raises(ValueError, match="export it with --end-to-end"):
        write_triton_repo(fp32_export[0], repo, name="plain")
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # nothing half-written
    with pytest.raises(ValueError, match="plain folder name"):
        write_triton_repo(single[0], repo, name="../x")


def test_triton_config_refuses_an_unknown_precision(single, tmp_path):
    with pytest.raises(ValueError, match="fp32, fp16"):
        write_triton_repo(single[0], tmp_path / "repo", name="m", precision="int8")
    assert not (tmp_path / "repo" / "m").exists()


def test_readme_triton_client_uses_the_configs_names(batched, tmp_path):
    """The README's client example (not run: it needs a server) names the config's input and outputs:
    those of the batched model `dgsnet export --triton-repo` writes by default."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## One-file detector"):]
    section = section[:section.index("\n## ", 5)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    config = _parse_config(write_triton_repo(batched[0], tmp_path / "repo", name="detector"))
    assert config.max_batch_size > 0 and config.input[0].name == "images"
    assert f'"{config.name}"' in code
    for name in [i.name for i in config.input] + [o.name for o in config.output if o.name != "logits"]:
        assert f'"{name}"' in code, name
    compile(code, "README client example", "exec")


# ------------------------------------------------------------ command line

def test_cli_refuses_contradicting_flags_before_exporting(run_dir, tmp_path, capsys):
    from dgsnet.cli import main

    cases = [(["--end-to-end", "--with-preprocessing"], "give one of them"),
             (["--triton-repo", str(tmp_path / "r"), "--tensorrt"], "takes images of any size"),
             (["--batched"], "applies to --end-to-end"),
             (["--end-to-end", "--triton-precision", "fp16"], "apply to --triton-repo"),
             (["--triton-repo", str(tmp_path / "r"), "--batched", "--triton-max-batch", "0"], "contradict")]
    for flags, message in cases:
        assert main(["export", "--ckpt", str(run_dir), "--out", str(tmp_path / "d.onnx"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists() and not (tmp_path / "r").exists()


def test_triton_repo_exports_the_batched_graph_unless_max_batch_is_0():
    import argparse

    from dgsnet.cli.deploy import _batched, add_export_parser

    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())

    def batched(*flags):
        return _batched(parser.parse_args(["export", "--ckpt", "run", "--out", "d.onnx", *flags]))

    assert batched("--triton-repo", "repo") and batched("--triton-repo", "repo", "--triton-max-batch", "1")
    assert not batched("--triton-repo", "repo", "--triton-max-batch", "0")  # the one-image model, on request
    assert not batched("--end-to-end") and batched("--end-to-end", "--batched")
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--ckpt", "run", "--out", "d.onnx", "--triton-precision", "int8"])


@pytest.mark.slow
def test_cli_end_to_end_export_with_triton_repo(run_dir, tmp_path):
    from dgsnet.cli import main

    out = tmp_path / "det.onnx"
    # the README's command: the batched graph, for Triton's dynamic batching, without --batched
    assert main(["export", "--ckpt", str(run_dir), "--out", str(out), "--triton-repo", str(tmp_path / "repo"),
                 "--triton-max-batch", "4"]) == 0
    record = json.loads(out.with_suffix(".export.json").read_text())
    assert record["end_to_end"]["images"] == len(e2e.verification_corpus()) and record["input_name"] == "images"
    assert record["triton_repo"] == str(tmp_path / "repo" / "det")
    config = _parse_config(tmp_path / "repo" / "det")
    assert config.max_batch_size == 4 and config.input[0].name == "images" and config.HasField("dynamic_batching")
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["precision_mode"] == "FP32"
    assert OnnxDetector(out).info.batched_images
