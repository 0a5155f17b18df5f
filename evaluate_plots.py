"""Plots for `evaluate.py`: pareto.png, traces.png, ttt_activity.png, expert_load.png from what it wrote (summary.json's
dict, traces/*.json), each PNG written atomically; the suites' own figures (`evaluate_report`) draw with `pyplot` and
`save_png` from here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import evaluate_stats as stats
from evaluate_rows import atomic_open


def load_traces(out: Path, labels: list[str], slug) -> dict[str, list[dict]]:
    """{label: its episode traces, by episode seed}; an unreadable trace file (cut short, not JSON) is left out of
    the plots with a note naming it: the figures come from episodes.csv, not from the traces."""
    result = {}
    for label in labels:
        files = sorted((out / "traces").glob(f"{slug(label)}__*.json"), key=lambda p: int(p.stem.rsplit("__", 1)[1]))
        result[label] = []
        for path in files:
            try:
                result[label].append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                print(f"note: left the unreadable trace {path} out of the plots ({exc})")
    return result


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, **kwargs) -> None:
    """fig as a PNG at 120 dpi, written atomically (`atomic_open`)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, **kwargs)


def write_plots(out: Path, summary: dict, traces: dict[str, list[dict]]) -> None:
    """pareto.png, traces.png, expert_load.png, ttt_activity.png."""
    plt = pyplot()
    pareto_plot(plt, out / "pareto.png", summary)
    common = set.intersection(*[{t["episode_seed"] for t in ts} for ts in traces.values()]) if traces else set()
    if common:
        seed = min(common)
        first = {lab: next(t for t in ts if t["episode_seed"] == seed) for lab, ts in traces.items()}
        trace_plot(plt, out / "traces.png", first, summary)
        ttt_plot(plt, out / "ttt_activity.png", first)
    if traces and all(traces.values()):
        expert_load_plot(plt, out / "expert_load.png", traces)


def _pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by x."""
    keep = [
        i
        for i, (x, y) in enumerate(points)
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for x2, y2 in points)
    ]
    return sorted(keep, key=lambda i: points[i][0])


def _annotate_apart(ax, notes: list[tuple[str, float, float]], fontsize: int = 8) -> None:
    """Label points (text, x, y) beside them, a label that would overlap an earlier one moved a line down (or up)."""
    ax.autoscale_view()
    to_px = ax.transData.transform
    placed: list[tuple[float, float, float]] = []  # (left, bottom, right) of each label, in points from the origin
    line = fontsize * 1.6
    for text, x, y in notes:
        px, py = to_px((x, y)) * 72.0 / ax.figure.dpi
        width = 0.6 * fontsize * len(text)
        for dy in (6, 6 - line, 6 + line, 6 - 2 * line, 6 + 2 * line):
            left, bottom = px + 6, py + dy
            if all(abs(bottom - b) >= line or left + width <= pl or left >= pr for pl, b, pr in placed):
                break
        placed.append((left, bottom, left + width))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, dy), fontsize=fontsize)


def pareto_plot(
    plt,
    path: Path,
    summary: dict,
    x_name: str = "mean_loss",
    y_name: str = "energy_per_token_mj",
    title: str = "Energy per token vs loss",
) -> None:
    agg = summary["aggregates"]
    fig, ax = plt.subplots(figsize=(7, 5))
    points, labels, notes = [], [], []
    groups = summary.get("run_groups") or {}
    member_of = {run: g for g, entry in groups.items() for run in entry["runs"]}
    names = list(dict.fromkeys(member_of.get(lab, lab) for lab in agg))  # a method's training runs share a colour
    named = set()
    for lab, d in agg.items():
        ex, ey = d[x_name], d[y_name]
        if not ex["n"] or not ey["n"]:
            continue
        name = member_of.get(lab, lab)
        first = name not in named
        named.add(name)
        text = f"{name} ({len(groups[name]['runs'])} runs)" if name in groups else name
        xerr = [[ex["iqm"] - ex["low"]], [ex["high"] - ex["iqm"]]]
        yerr = [[ey["iqm"] - ey["low"]], [ey["high"] - ey["iqm"]]]
        ax.errorbar(ex["iqm"], ey["iqm"], xerr=xerr, yerr=yerr, fmt="o", capsize=4, color=f"C{names.index(name)}",
                    label=text if first else None)  # fmt: skip
        if first:
            notes.append((text, ex["iqm"], ey["iqm"]))
        points.append((ex["iqm"], ey["iqm"]))
        labels.append(lab)
    _annotate_apart(ax, notes)
    front = _pareto_front(points)
    if len(front) > 1:
        ax.plot(
            [points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, alpha=0.5, label="Pareto front"
        )
    ax.set_xlabel(f"{stats.METRIC_BY_NAME[x_name].title} [{summary['sources'][x_name]}]")
    ax.set_ylabel(f"{stats.METRIC_BY_NAME[y_name].title} [{summary['sources'][y_name]}]")
    ax.set_title(f"{title}: IQM with {summary['statistic'].split(' with ')[1].split(' (')[0]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def _shift_line(ax, trace: dict) -> None:
    """A dotted line where the stream switches domain (time axis: the end of each interval)."""
    per_step = trace["steps"][0]["runtime_tokens"]
    ax.axvline(trace["shift_tokens"] / per_step * trace["interval_s"], color="grey", ls=":", lw=1)


def trace_plot(plt, path: Path, first: dict[str, dict], summary: dict) -> None:
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for i, (lab, t) in enumerate(first.items()):
        time_s = (np.arange(len(t["steps"])) + 1) * t["interval_s"]
        for ax, key in zip(axes, ("temperature_c", "power_w", "sm_clock_mhz")):
            ax.plot(time_s, [s[key] for s in t["steps"]], color=f"C{i}", label=lab, lw=1.4)
    source = summary["sources"]["mean_power_w"]
    for ax, name in zip(axes, ("temperature (C)", "mean power per interval (W)", "SM clock (MHz)")):
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        _shift_line(ax, next(iter(first.values())))
    axes[-1].set_xlabel("time at the end of each interval (s); dotted: domain shift")
    axes[0].legend(fontsize=8, ncol=2)
    axes[0].set_title(
        f"Temperature, power and clock over episode seed {next(iter(first.values()))['episode_seed']} [{source}]",
        fontsize=10,
    )
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def ttt_plot(plt, path: Path, first: dict[str, dict]) -> None:
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for i, (lab, t) in enumerate(first.items()):
        time_s = (np.arange(len(t["steps"])) + 1) * t["interval_s"]
        axes[0].step(
            time_s, np.cumsum([s["ttt_tokens_trained"] for s in t["steps"]]), where="post", color=f"C{i}", label=lab
        )
        axes[1].plot(time_s, [s["loss"] for s in t["steps"]], color=f"C{i}", lw=1.2, label=lab)
    axes[0].set_ylabel("cumulative TTT tokens trained")
    axes[1].set_ylabel("loss per interval (nats)")
    axes[1].set_xlabel("time at the end of each interval (s); dotted: domain shift")
    for ax in axes:
        ax.grid(alpha=0.3)
        _shift_line(ax, next(iter(first.values())))
    axes[0].legend(fontsize=8, ncol=2)
    axes[0].set_title("Test-time training activity and loss [measured]", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def expert_load_plot(plt, path: Path, traces: dict[str, list[dict]]) -> None:
    """Mean share of routed slots per expert before and after the shift, over all of each policy's episodes."""
    width = max(len(ts[0]["steps"][0]["expert_load"]) for ts in traces.values())
    mats = np.full((2, len(traces), width), np.nan)
    for r, ts in enumerate(traces.values()):
        for half in (0, 1):
            load = [
                np.asarray(s["expert_load"], float)
                for t in ts
                for s in t["steps"]
                if (s["domain"] == t["domains"][1]) == bool(half)
            ]
            if load:
                total = np.sum(load, axis=0)
                mats[half, r, : len(total)] = total / max(total.sum(), 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.1 * width, 1.2 + 0.5 * len(traces)), squeeze=False)
    vmax = np.nanmax(mats) if np.isfinite(mats).any() else 1.0
    for half, ax in enumerate(axes[0]):
        im = ax.imshow(mats[half], aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(("before" if half == 0 else "after") + " the domain shift", fontsize=10)
        ax.set_xticks(range(width), [f"e{i}" for i in range(width)])
        ax.set_yticks(range(len(traces)), list(traces) if half == 0 else [""] * len(traces))
        for r in range(len(traces)):
            for c in range(width):
                if np.isfinite(mats[half, r, c]):
                    ax.text(
                        c,
                        r,
                        f"{mats[half, r, c]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if mats[half, r, c] < 0.6 * vmax else "black",
                    )
    fig.colorbar(im, ax=axes[0].tolist(), label="share of routed slots [measured]")
    save_png(fig, path, bbox_inches="tight")
    plt.close(fig)
