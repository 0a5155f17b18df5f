"""Microbenchmarks of the real kernels for `kernels.profile`: shape grids, the PyTorch path each op runs, timing
(CPU wall time; on CUDA, CUDA events inside a telemetry NVML energy window, with the SM clock sampled)."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass

import numpy as np

from kernels.deploy_work import EMBED, GEMM_DOWN, GEMM_UP, OP_INDEX, SDPA, SILU_MUL, WorkArrays, make_arrays
from telemetry import get_gpu_spec

log = logging.getLogger(__name__)


@dataclass
class Rows:
    """Measured launches: `WorkArrays` columns plus time (s), energy (J, NaN if none) and SM clock (MHz)."""

    work: WorkArrays
    seconds: np.ndarray
    energy_j: np.ndarray
    clock_mhz: np.ndarray
    keys: list[str]

    def select(self, mask: np.ndarray) -> Rows:
        keys = [k for k, m in zip(self.keys, mask) if m]
        return Rows(self.work.select(mask), self.seconds[mask], self.energy_j[mask], self.clock_mhz[mask], keys)


def grid(quick: bool, held_out: bool, device: str = "cpu") -> list:
    """Shapes (op, tokens, d_model, d_ff, seq_len, experts) to measure: the fit grid or the held-out grid.

    On CUDA the grid spans the reference's (tokens 64-16,384, d_model 1,024-4,096, d_ff 512-14,336); on the CPU a
    grid a thousand times smaller in FLOPs, so that it runs in seconds.
    """
    gpu = device == "cuda"
    if held_out:
        mlp = (
            [(256, 1536, 1024), (2048, 3072, 6144), (8192, 1536, 3072)]
            if gpu
            else [(32, 96, 128), (128, 192, 128), (512, 96, 384)]
        )
        extra = (
            [("sdpa_causal", 4096, 1536, 0, 1024, 0), ("router_topk", 8192, 3072, 0, 0, 16)]
            if gpu
            else [("sdpa_causal", 384, 96, 0, 96, 0), ("router_topk", 768, 96, 0, 0, 8)]
        )
    elif quick:
        mlp = [(512, 1024, 2048), (8192, 2048, 8192)] if gpu else [(16, 64, 64), (256, 128, 256)]
        extra = (
            [("sdpa_causal", 4096, 1024, 0, 512, 0), ("router_topk", 4096, 2048, 0, 0, 8)]
            if gpu
            else [("sdpa_causal", 256, 64, 0, 64, 0), ("router_topk", 512, 64, 0, 0, 8)]
        )
    else:
        sizes = (
            ((64, 512, 4096, 16384), (1024, 2048, 4096), (512, 2048, 8192, 14336))
            if gpu
            else ((16, 64, 256, 1024), (64, 128, 256), (64, 256))
        )
        mlp = [(t, d, f) for t in sizes[0] for d in sizes[1] for f in sizes[2]]
        scale = 16 if gpu else 1  # tokens and widths of attention, router and head shapes
        extra = [
            ("sdpa_causal", b * s * scale, h * 32 * (4 if gpu else 1), 0, s * scale, 0)
            for b, s, h in ((2, 64, 2), (4, 128, 4), (2, 256, 8))
        ]
        extra += [
            ("router_topk", t * scale, d * scale, 0, 0, e)
            for t, d, e in ((256, 64, 8), (1024, 128, 8), (4096, 128, 16))
        ]
        extra += [("embed_head", t * scale, d * scale, 256, 0, 0) for t, d in ((256, 64), (1024, 128))]
    return [(op, t, d, f, 0, 0) for t, d, f in mlp for op in ("gemm_up", "gemm_down", "silu_mul")] + extra


def _kernel(op: int, t: int, d: int, f: int, s: int, e: int, device: str, dtype):
    """A closure running one launch of the shape with the PyTorch path the runtime uses on this device."""
    import torch
    import torch.nn.functional as F

    from kernels import dispatch

    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    if op == GEMM_UP:
        x, w = rand(t, d), rand(d, 2 * f)
        return lambda: x @ w
    if op in (GEMM_DOWN, EMBED):
        x, w = (rand(t, f), rand(f, d)) if op == GEMM_DOWN else (rand(t, d), rand(d, f))
        return lambda: x @ w
    if op == SILU_MUL:
        h = rand(t, 2 * f)
        return lambda: F.silu(h[:, :f]) * h[:, f:]
    if op == SDPA:
        heads = max(d // (128 if device == "cuda" else 32), 1)  # head_dim 128 on a GPU, 32 on the CPU
        q, k, v = (rand(t // s, heads, s, d // heads) for _ in range(3))
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x, wg = rand(t, d), rand(d, e)
    return lambda: dispatch.route(x @ wg, None, 2)


def measure(shapes: list, device: str, window_s: float, threads: int = 1) -> Rows:
    """Time (and on CUDA, energy and clock of) each shape run back to back; median of repeats on the CPU."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(shapes, device, window_s)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(shapes: list, device: str, window_s: float) -> Rows:
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    meter = _nvml_meter() if device == "cuda" else None
    try:
        return _measure_shapes(shapes, device, window_s, dtype, meter)
    finally:
        if meter is not None:
            meter.close()


def _measure_shapes(shapes: list, device: str, window_s: float, dtype, meter) -> Rows:
    seconds, energy, clocks = [], [], []
    for op, t, d, f, s, e in shapes:
        fn = _kernel(OP_INDEX[op], t, d, f, s, e, device, dtype)
        for _ in range(3):
            fn()
        if device == "cuda":
            sec, joules, mhz = _measure_cuda(fn, meter, window_s)
        else:
            reps = []
            for _ in range(5):
                start, n = time.perf_counter(), 0
                while n == 0 or time.perf_counter() - start < 0.004:
                    fn()
                    n += 1
                reps.append((time.perf_counter() - start) / n)
            sec, joules, mhz = float(np.median(reps)), np.nan, np.nan
        seconds.append(sec)
        energy.append(joules)
        clocks.append(mhz)
    cols = list(zip(*shapes))
    work = make_arrays([OP_INDEX[o] for o in cols[0]], cols[1], cols[2], cols[3], cols[4], cols[5])
    keys = [f"{op}:T={t},d={d},f={f},S={s},E={e}" for op, t, d, f, s, e in shapes]
    return Rows(work, np.array(seconds), np.array(energy), np.array(clocks), keys)


def _nvml_meter():
    """Telemetry's NVML monitor of the GPU the kernels run on (energy windows, sampled SM clock)."""
    import torch

    import telemetry

    return telemetry.GpuSystemMonitor(source="nvml", cuda_device=torch.cuda.current_device())


def _measure_cuda(fn, meter, window_s: float) -> tuple[float, float, float]:
    """Seconds and joules per call (CUDA events; a telemetry NVML energy window over ~window_s) and mean SM clock."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    n = max(int(window_s / max(time.perf_counter() - t0, 1e-6)), 10)
    meter.begin_window("kcm_profile")  # synchronises CUDA
    start.record()
    for _ in range(n):
        fn()
    end.record()
    m = meter.end_window("kcm_profile")  # synchronises CUDA
    if not m.accurate:
        log.warning("energy window of %.2f s not accurate (%s); raise --window-s", m.duration_s, m.note)
    if m.sm_clock_mhz is None:
        raise RuntimeError("the NVML energy window sampled no SM clock; cannot bring times to full clock")
    return start.elapsed_time(end) / 1e3 / n, m.energy_j / n, float(m.sm_clock_mhz)


def device_info() -> tuple[str, dict, object]:
    """('cuda' | 'cpu', device description, GpuSpec or None)."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        gpu = next((g for g in ("H100", "H200", "A100", "V100", "L4") if g in name.upper()), None)
        if gpu is None:
            raise ValueError(f"no GpuSpec for {name!r}; add it to telemetry.specs to calibrate this GPU")
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except Exception as err:  # NVML is optional for naming the driver only
            driver = f"unknown ({type(err).__name__})"
        return "cuda", {"name": name, "driver": str(driver), "kind": "cuda"}, get_gpu_spec(gpu)
    return (
        "cpu",
        {"name": platform.processor() or platform.machine(), "driver": f"torch {torch.__version__}", "kind": "cpu"},
        None,
    )
