"""`kernels.dispatch` on the CPU, and Triton being optional at import (main test run)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

from kernels import dispatch
from kernels._triton import interpreting
from kernels.routing import fused_route_reference, fused_route_triton
from kernels.swiglu import grouped_swiglu_reference


@pytest.fixture
def fake_capability(monkeypatch):
    """(the devices whose compute capability was asked for, {"major": ...} to set it): a GPU of capability 9.0 that
    fails the test when a policy asks it of a device other than CUDA."""
    asked, capability = [], {"major": 9}

    def get_device_capability(device=None):
        assert torch.device(device).type == "cuda", f"capability asked of {device}"
        asked.append(device)
        return capability["major"], 0

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    return asked, capability


def test_describe_cpu_says_reference():
    d = dispatch.describe("cpu")
    assert d["route"] == d["expert_swiglu"] == d["align"] == dispatch.REFERENCE
    assert "cpu" in d["note"] and d["experiments"] == "none"


def test_describe_names_the_experimental_switches_and_the_policies(monkeypatch):
    from kernels import swiglu

    monkeypatch.setattr(swiglu, "DEVICE_DESCRIPTORS", True)
    assert dispatch.describe("cpu")["experiments"] == "none"  # the reference path has none
    assert dispatch.describe("cpu")["tma_weights"] == dispatch.describe("cpu")["atomic_top2"] == "off"
    monkeypatch.setattr(dispatch, "_triton_reason", lambda device: None)  # as on CUDA with Triton
    capability = {"major": 9}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (capability["major"], 0))
    assert dispatch.describe("cuda")["experiments"] == "DEVICE_DESCRIPTORS"
    assert dispatch.describe("cuda")["tma_weights"].startswith("auto (passes of >= 65536 slots")
    assert dispatch.describe("cuda")["atomic_top2"] == "on (auto: on from compute capability 9.0)"
    capability["major"] = 8
    assert dispatch.describe("cuda")["atomic_top2"] == "off (auto: on from compute capability 9.0)"
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", True)
    monkeypatch.setattr(swiglu, "ATOMIC_TOP2", True)
    assert dispatch.describe("cuda")["tma_weights"] == dispatch.describe("cuda")["atomic_top2"] == "on"
    monkeypatch.setattr(swiglu, "DEVICE_DESCRIPTORS", False)
    monkeypatch.setattr(swiglu, "ATOMIC_TOP2", False)
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", False)
    assert dispatch.describe("cuda") | {"note": ""} == {
        "route": "triton",
        "align": "triton",
        "expert_swiglu": "triton",
        "note": "",
        "tma_weights": "off",
        "atomic_top2": "off",
        "experiments": "none",
    }


def test_atomic_top2_policy(monkeypatch, fake_capability):
    """`use_atomic_top2`: never at k != 2; forced by ATOMIC_TOP2; by default on an NVIDIA GPU of compute capability
    >= 9.0 alone (asked only there), so the CPU and the interpreter take the combine kernel."""
    from kernels import swiglu

    asked, capability = fake_capability
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert swiglu.ATOMIC_TOP2 is None
    assert not any(swiglu.use_atomic_top2(cuda, k) for k in (1, 3, 8)) and not swiglu.use_atomic_top2(cpu, 2)
    assert asked == []
    assert swiglu.use_atomic_top2(cuda, 2) and asked == [cuda]
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: its capabilities are not NVIDIA's
    assert not swiglu.use_atomic_top2(cuda, 2)
    monkeypatch.setattr(torch.version, "hip", None)
    capability["major"] = 8  # an A100: no native vector bf16 atomic adds
    assert not swiglu.use_atomic_top2(cuda, 2)
    monkeypatch.setattr(swiglu, "ATOMIC_TOP2", True)
    assert swiglu.use_atomic_top2(cpu, 2) and swiglu.use_atomic_top2(cuda, 2) and not swiglu.use_atomic_top2(cuda, 8)
    monkeypatch.setattr(swiglu, "ATOMIC_TOP2", False)
    capability["major"] = 9
    assert not swiglu.use_atomic_top2(cuda, 2)


def test_tma_weights_policy(monkeypatch, fake_capability):
    """`use_tma_weights`: forced by TMA_WEIGHTS; by default only on an NVIDIA GPU of compute capability >= 9.0 (asked
    for only there) with Triton's host tensor descriptors, from TMA_MIN_SLOTS slots a pass."""
    from kernels import swiglu

    asked, capability = fake_capability
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert swiglu.TMA_WEIGHTS is None and swiglu.TMA_MIN_SLOTS == 65536
    assert not swiglu.use_tma_weights(cpu, 10**6) and not swiglu.use_tma_weights(cuda, 65535)
    assert asked == []
    assert swiglu.use_tma_weights(cuda, 65536) == swiglu._has_tensor_descriptors() and asked == [cuda]
    monkeypatch.setattr(swiglu, "_has_tensor_descriptors", lambda: True)
    assert swiglu.use_tma_weights(cuda, 65536)
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: its capabilities are not NVIDIA's
    assert not swiglu.use_tma_weights(cuda, 10**6)
    monkeypatch.setattr(torch.version, "hip", None)
    capability["major"] = 8  # an A100: no TMA
    assert not swiglu.use_tma_weights(cuda, 10**6)
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", True)
    assert swiglu.use_tma_weights(cpu, 1) and swiglu.use_tma_weights(cuda, 1)
    monkeypatch.setattr(swiglu, "TMA_WEIGHTS", False)
    assert not swiglu.use_tma_weights(cuda, 10**6)


def test_cpu_dispatch_is_the_reference_and_differentiable(gen):
    """On the CPU both ops are the reference: the same outputs and the same gradients as calling it directly."""
    widths = (8, 16, 4)
    x = torch.randn(10, 8, generator=gen, requires_grad=True)
    gate = torch.randn(8, 3, generator=gen)
    w_up = torch.randn(8, 2 * sum(widths), generator=gen, requires_grad=True)
    w_down = torch.randn(sum(widths), 8, generator=gen, requires_grad=True)
    probe = torch.randn(10, 8, generator=gen)  # a loss that weighs every output differently

    def loss_and_grads(route, swiglu):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, w_up, w_down)]
        r = route(leaves[0] @ gate, torch.zeros(3), 2)
        y = swiglu(leaves[0], r.topk_ids, r.topk_weights, leaves[1], leaves[2], widths)
        (y * probe).sum().backward()
        return r, y, [t.grad for t in leaves]

    r, y, grads = loss_and_grads(dispatch.route, dispatch.expert_swiglu)
    q, y_ref, grads_ref = loss_and_grads(fused_route_reference, grouped_swiglu_reference)
    assert torch.equal(r.topk_ids, q.topk_ids)
    torch.testing.assert_close(r.topk_weights, q.topk_weights)
    torch.testing.assert_close(y, y_ref)
    for name, g, g_ref in zip(("x", "w_up", "w_down"), grads, grads_ref):
        assert g is not None and g.abs().sum() > 0, name
        torch.testing.assert_close(g, g_ref, msg=name)


def test_calls_that_need_gradients_take_the_reference_where_triton_serves(gen, monkeypatch):
    """As on CUDA with Triton (its availability faked on CPU tensors, the Triton entry points spied): a call whose
    inputs require grad with grad enabled takes the reference; under no_grad or inference mode Triton serves."""
    monkeypatch.setattr(dispatch, "_announce", lambda device: None)
    calls = []

    def spy(name, reference):
        def triton_stand_in(*args):
            calls.append(name)
            return reference(*args)

        return triton_stand_in

    monkeypatch.setattr(dispatch, "fused_route_triton", spy("route", fused_route_reference))
    monkeypatch.setattr(dispatch, "grouped_swiglu_triton", spy("expert_swiglu", grouped_swiglu_reference))
    widths = (4, 8)
    x = torch.randn(6, 8, generator=gen)
    w_up = torch.randn(8, 2 * sum(widths), generator=gen)
    w_down = torch.randn(sum(widths), 8, generator=gen)
    logits = torch.randn(6, 2, generator=gen)

    def both(x, logits, w_up, w_down):
        r = dispatch.route(logits, torch.zeros(2), 1)
        return dispatch.expert_swiglu(x, r.topk_ids, r.topk_weights, w_up, w_down, widths)

    def triton_calls(*inputs, context=contextlib.nullcontext):
        calls.clear()
        with context():
            y = both(*inputs)
        return calls[:], y

    trained = [t.clone().requires_grad_(True) for t in (x, logits, w_up, w_down)]
    called, y = triton_calls(*trained)
    assert called == []  # pretraining, TTT: differentiated through the reference
    y.sum().backward()
    assert all(t.grad is not None for t in trained)
    # the routing needs no gradient when only an expert weight does; the experts then do
    assert triton_calls(x, logits, w_up.clone().requires_grad_(True), w_down)[0] == ["route"]
    assert triton_calls(x, logits.clone().requires_grad_(True), w_up, w_down)[0] == []  # the combine weights need one
    assert triton_calls(*trained, context=torch.no_grad)[0] == ["route", "expert_swiglu"]
    assert triton_calls(*trained, context=torch.inference_mode)[0] == ["route", "expert_swiglu"]
    assert triton_calls(x, logits, w_up, w_down)[0] == ["route", "expert_swiglu"]  # nothing requires grad


@pytest.mark.skipif(interpreting(), reason="under TRITON_INTERPRET=1 the Triton path does run on CPU tensors")
def test_triton_entry_point_says_why_not_on_cpu():
    pytest.importorskip("triton")
    with pytest.raises(RuntimeError, match="need CUDA tensors"):
        fused_route_triton(torch.randn(4, 4), None, 2)


def test_import_without_triton():
    """With Triton unimportable: `import kernels` works, dispatch says why, the Triton entry points raise."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "from kernels.align import moe_align_block_size_triton\n"
        "print(kernels.dispatch.describe('cuda')['note'])\n"
        "try:\n"
        "    moe_align_block_size_triton(torch.zeros(2, 1, dtype=torch.int64), 16, 4)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.strip().splitlines()
    assert "Triton is not importable" in lines[0]
    assert lines[1].startswith("moe_align_block_size_triton: cannot run the Triton kernel: Triton is not importable")
