"""The project uses no torch / torchvision / triton name that the oldest supported release (torch 2.11,
the GPU image's) lacks: checked against tests/torch_api_min.json, recorded under torch 2.11 by
scripts/torch-compat.sh --record, so CI needs no old torch. The checker and the recorder are
tested here too (scripts/torch_api.py)."""
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "tests" / "torch_api_min.json").read_text())


def _tool():
    spec = importlib.util.spec_from_file_location("torch_api", ROOT / "scripts" / "torch_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


torch_api = _tool()


def test_every_library_name_the_project_uses_is_in_the_oldest_supported_release():
    used = torch_api.used_names()
    # The scan sees the project: the objective's custom ops, FSDP2, SDPA, the Triton language.
    for name in ("torch.library.custom_op", "torch.library.register_fake", "torch.distributed.fsdp.fully_shard",
                 "torch.nn.functional.scaled_dot_product_attention", "triton.language.load"):
        assert name in used, f"the scan missed {name}: {sorted(used)[:20]}..."
    assert torch_api.check(used, MANIFEST) == []


def test_the_manifest_is_of_the_release_pyproject_names_as_the_minimum():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    train = {Requirement(r).name: Requirement(r) for r in project["project"]["optional-dependencies"]["train"]}
    lows = {name: [s.version for s in train[name].specifier if s.operator == ">="] for name in ("torch", "torchvision")}
    for name, (low,) in lows.items():
        recorded = re.match(r"\d+\.\d+", MANIFEST["versions"][name]).group()
        assert recorded == ".".join(low.split(".")[:2]), (
            f"pyproject.toml says {name}>={low} but tests/torch_api_min.json was recorded under "
            f"{name} {MANIFEST['versions'][name]}: re-record with bash scripts/torch-compat.sh --record")


def test_a_name_newer_than_the_minimum_is_reported_with_its_line():
    # Both are real: torch 2.14 has them, torch 2.11 has not.
    source = ("import torch\n"
              "import torch.nn.functional as F\n"
              "from torch.distributed.fsdp import DataParallelMeshDims\n"
              "\n"
              "loss = F.linear_cross_entropy(x, w, y)\n"
              "ok = F.scaled_dot_product_attention(q, k, v)\n"
              "step = torch.compile(step, dynamic=False, recompile_limit=8)\n")
    used = {k: [f"m.py:{n}" for n in v] for k, v in torch_api.uses_in_source(source).items()}
    problems = sorted(torch_api.check(used, MANIFEST))
    assert len(problems) == 3, problems
    assert problems[0].startswith("torch.compile(recompile_limit=) (m.py:7): torch.compile takes no keyword "
                                  "recompile_limit= in torch 2.11")
    assert problems[1].startswith("torch.distributed.fsdp.DataParallelMeshDims (m.py:3): not in torch 2.11")
    assert problems[2].startswith("torch.nn.functional.linear_cross_entropy (m.py:5): not in torch 2.11")
    assert "guard it" in problems[2] and "pyproject.toml" in problems[2]


def test_a_module_the_manifest_does_not_cover_asks_for_a_new_recording():
    assert "torch.xpu" not in MANIFEST["names"]  # the project uses nothing of torch.xpu yet
    problems = torch_api.check({"torch.xpu.device_count": ["m.py:1"]}, MANIFEST)
    assert len(problems) == 1 and "torch.xpu is not in the manifest" in problems[0]
    assert "scripts/torch-compat.sh --record" in problems[0]
    problems = torch_api.check({"torch.nn.functional.relu(inplace=)": ["m.py:2"]}, MANIFEST)
    assert problems == ["torch.nn.functional.relu(inplace=) (m.py:2): torch.nn.functional.relu's keywords are "
                        "not in the manifest; record them under the oldest torch: bash scripts/torch-compat.sh --record"]


def test_the_scan_resolves_every_import_form():
    source = ("import torch\n"
              "import torch.nn.functional\n"
              "from torch import nn\n"
              "import torch.distributed as dist\n"
              "import triton.language as tl\n"
              "from torch.utils.data import DataLoader as Loader\n"
              "import numpy as np\n"
              "def f(x, model):\n"
              "    torch.nn.functional.relu(x)\n"
              "    nn.Linear(2, 3).weight.data\n"
              "    dist.all_reduce(x)\n"
              "    tl.sum(x, axis=0)\n"
              "    Loader.__init__\n"
              "    x.view(2).sum()          # a tensor method: not seen\n"
              "    model.torch.foo          # not an imported library\n"
              "    np.zeros(3)\n"
              "    torch.ops.dgsnet.dgs_forward.default(x)\n"
              "    torch.zeros(3, dtype=torch.float64, **extra)\n")
    found = torch_api.uses_in_source(source)
    assert set(found) == {
        "torch", "torch.nn.functional", "torch.nn", "torch.distributed", "triton.language",
        "torch.utils.data.DataLoader", "torch.nn.functional.relu", "torch.nn.Linear", "torch.distributed.all_reduce",
        "triton.language.sum", "torch.utils.data.DataLoader.__init__", "torch.ops.dgsnet.dgs_forward.default",
        "triton.language.sum(axis=)", "torch.zeros", "torch.zeros(dtype=)", "torch.float64"}
    assert found["torch.nn.Linear"] == [10] and found["torch.nn.functional"] == [2]


def test_the_recorder_lists_submodules_config_keys_and_module_properties_and_stops_at_dynamic_names():
    torch = pytest.importorskip("torch")
    manifest = torch_api.record(["torch.nn.functional.linear", "torch._dynamo.config.recompile_limit",
                                 "torch.backends.cudnn.allow_tf32", "torch.ops.aten.add", "torch.fft.rfft2",
                                 "torch.compile(dynamic=)", "torch.load(weights_only=)"])
    names = manifest["names"]
    assert manifest["versions"] == {"torch": torch.__version__}
    assert "linear" in names["torch.nn.functional"] and "functional" in names["torch.nn"]
    assert "recompile_limit" in names["torch._dynamo.config"]  # a config key, invisible to dir()
    assert "allow_tf32" in names["torch.backends.cudnn"]  # a property of the module's class
    assert "fft" in names["torch"] and "rfft2" in names["torch.fft"]
    assert names["torch.ops"] is None  # op namespaces appear on first access: not listable
    assert "torch.nn.functional.linear" not in names  # a function at the end tells nothing
    assert {"dynamic", "fullgraph", "backend"} <= set(manifest["keywords"]["torch.compile"])
    assert manifest["keywords"]["torch.load"] is None  # takes **pickle_load_args: any keyword passes
    # What was recorded here passes its own check, and a name it lacks does not.
    assert torch_api.check({"torch.nn.functional.linear": ["m.py:1"]}, manifest) == []
    assert len(torch_api.check({"torch.nn.functional.no_such_function": ["m.py:1"]}, manifest)) == 1


def test_the_compat_script_explains_itself_and_refuses_an_unknown_flag():
    """scripts/torch-compat.sh downloads gigabytes when it runs: only its argument handling is
    tested here (it ran the suite under torch 2.11 by hand; README.md, Dependencies)."""
    script = str(ROOT / "scripts" / "torch-compat.sh")
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and "--record" in shown.stdout and "--torch 2.11.0" in shown.stdout
    bad = subprocess.run(["bash", script, "--torhc", "2.11.0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown argument --torhc" in bad.stderr
