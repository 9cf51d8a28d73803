"""Which backend runs a call (dgsnet.surgery.backends) and the registry behind it."""
import importlib.util
import os

import pytest
import torch

from dgsnet.surgery import available_backends, resolve_backend
from dgsnet.surgery.backends import extension, op, registry


def test_auto_picks_the_fastest_available_backend():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == ("cpp" if extension.available() else "reference")
    assert "reference" in available_backends(cpu)
    if extension.available():
        assert "cpp" in available_backends(cpu)


def test_auto_backend_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == ("cpp" if extension.available() else "reference")


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises((ValueError, RuntimeError), match="cuda"):
        resolve_backend("cuda", torch.device("cpu"))


def test_devices_may_be_given_by_name():
    assert available_backends("cpu") == available_backends(torch.device("cpu"))
    assert resolve_backend("auto", "cpu") == resolve_backend("auto", torch.device("cpu"))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="choose one of reference, cpp, cuda, triton, auto"):
        resolve_backend("fast", "cpu")


@pytest.mark.skipif(not extension.available(), reason="dgsnet._C not built")
def test_extension_registers_cpp():
    dgs = op("cpp", "dgs_objective")
    assert dgs.forward is torch.ops.dgsnet.dgs_forward
    assert dgs.backward is torch.ops.dgsnet.dgs_backward
    assert op("cpp", "project_params_").forward is torch.ops.dgsnet.project_params_
    assert (("cuda", "dgs_objective") in registry.registered()) == extension.cuda_compiled()


def test_register_and_lookup(monkeypatch):
    monkeypatch.setattr(registry, "_TABLE", {})

    def forward(x):
        return x

    registry.register("mine", "double", forward)
    assert registry.lookup("mine", "double") == registry.Op(forward, None)
    assert registry.registered() == [("mine", "double")]
    with pytest.raises(LookupError, match="no kernels of op 'triple' .* backend 'mine' .*it has: double"):
        registry.lookup("mine", "triple")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_the_triton_interpreter_probe_passes_on_the_locked_stack():
    # the locked triton and numpy run the interpreter; an incompatible pair (triton 3.6 with
    # numpy >= 2.4) would make triton_usable("cpu") refuse with the reason instead of failing later
    from dgsnet.surgery.backends import _interpreter_problem, triton_usable

    assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py sets it before triton loads
    assert _interpreter_problem() == ""
    assert triton_usable("cpu") == (True, "")
