"""The env's renderings of its last interval: a line of text (`ansi`) and a frame (`rgb_array`, for video wrappers
such as `gymnasium.wrappers.RecordVideo`, and the mode SB3's `make_vec_env` asks for by default)."""

from __future__ import annotations

import numpy as np

from envs.backends import IntervalResult
from moe_runtime import ControlAction


def ttt_schedule(control: ControlAction) -> str:
    """`ttt every F xC` (tokens between updates, chunk tokens), or `ttt off`."""
    return f"ttt every {control.ttt_frequency_tokens} x{control.ttt_chunk_tokens}" if control.ttt_enabled else "ttt off"


def ansi_line(interval: int, r: IntervalResult, control: ControlAction) -> str:
    """One line: the interval's stream, power, heat, clock, cost, latency, backlog and TTT schedule."""
    return (
        f"t={interval:3d} {r.report.domain:<5} loss {r.report.loss:5.3f} | {r.power_w:5.0f} W "
        f"{r.temperature_c:5.1f} C {r.sm_clock_mhz:6.0f} MHz | {r.energy_per_token_j * 1e3:7.3f} mJ/tok "
        f"lat {r.latency_ms:7.1f} ms backlog {r.backlog_tokens:9.0f} | {ttt_schedule(control)} [{r.source}]"
    )


def rgb_frame(
    interval: int, r: IntervalResult, control: ControlAction, tdp_w: float, slowdown_temp_c: float
) -> np.ndarray:
    """A 360 x 640 RGB frame [H, W, 3] uint8: each expert's share of the routed tokens and its bias (left), power
    against TDP and temperature against the slowdown temperature (right), the `ansi_line` figures as the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: only a render pays for matplotlib
    from matplotlib.figure import Figure

    counts = np.asarray(r.report.expert_token_counts, dtype=np.float64).sum(0)
    load = counts / max(1.0, counts.sum())
    biases = np.asarray(control.biases(len(load)), dtype=np.float64)
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    experts, hardware = fig.subplots(1, 2, width_ratios=(2, 1))
    x = np.arange(len(load))
    experts.bar(x, load, color="tab:blue", label="load share")
    experts.set_ylim(0, 1)
    experts.set_xticks(x)
    experts.set_xlabel("expert")
    experts.set_ylabel("share of routed tokens")
    bias_axis = experts.twinx()
    bias_axis.plot(x, biases, "o", color="tab:orange", label="bias")
    bias_axis.axhline(0.0, color="tab:orange", lw=0.5)
    bound = max(1e-3, float(np.abs(biases).max()))
    bias_axis.set_ylim(-1.1 * bound, 1.1 * bound)
    bias_axis.set_ylabel("selection bias", color="tab:orange")
    shares = [r.power_w / tdp_w, r.temperature_c / slowdown_temp_c]
    hardware.barh([1, 0], shares, color=["tab:red", "tab:purple"])
    hardware.axvline(1.0, color="k", lw=0.8)
    hardware.set_xlim(0, 1.2)
    hardware.set_yticks([1, 0], [f"{r.power_w:.0f} of {tdp_w:.0f} W\n(TDP)",
                                 f"{r.temperature_c:.1f} of {slowdown_temp_c:.0f} C\n(slowdown)"])  # fmt: skip
    hardware.set_xlabel("share")
    hardware.yaxis.tick_right()
    fig.suptitle(
        f"t={interval} {r.report.domain}  loss {r.report.loss:.3f}  {r.energy_per_token_j * 1e3:.3f} mJ/tok  "
        f"latency {r.latency_ms:.1f} ms  {ttt_schedule(control)}  [{r.source}]",
        fontsize=8,
    )
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
