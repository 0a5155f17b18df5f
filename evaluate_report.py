"""Reports for `evaluate.py`: report.md, the console table, and the original system's output files (router tables,
TTT-allocation Pareto curve, single-GPU comparison files); the episode plots are `evaluate_plots`.

Everything here reads what `evaluate.py` wrote (summary.json's dict, episodes.csv rows, traces/*.json) and writes
files; it runs nothing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

import evaluate_stats as stats
from evaluate_plots import pyplot, save_png
from evaluate_rows import atomic_open

HARDWARE_TABLE = (
    "energy_per_token_mj",
    "mean_power_w",
    "peak_power_w",
    "peak_temperature_c",
    "temperature_rise_c",
    "time_throttled_s",
    "time_per_token_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_tokens_per_s",
    "slo_violations",
)
QUALITY_TABLE = (
    "mean_loss",
    "perplexity",
    "loss_after_shift",
    "ttt_updates",
    "ttt_overhead_pct",
    "kcm_pred_energy_per_token_mj",
    "kcm_energy_error_pct",
    "episode_return",
)
IMPROVEMENT_TABLE = (
    "energy_per_token_mj",
    "mean_power_w",
    "peak_temperature_c",
    "time_throttled_s",
    "latency_p95_ms",
    "throughput_tokens_per_s",
    "slo_violations",
    "mean_loss",
    "loss_after_shift",
    "ttt_overhead_pct",
)
CONSOLE_TABLE = (
    "energy_per_token_mj",
    "peak_temperature_c",
    "latency_p95_ms",
    "throughput_tokens_per_s",
    "mean_loss",
    "loss_after_shift",
    "ttt_updates",
    "slo_violations",
)
DAGGER = "\u2020"
SECTION_PLOTS = ("ttt_allocation.png", "comparison_plot.png")  # shown in their suite's section, not under Plots


# ----- formatting ------------------------------------------------------------------------------------------------
def num(x: float) -> str:
    """A figure with about four significant digits, no exponent for ordinary magnitudes."""
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}" if a > 0 else "0"


def cell(e: dict, unit: str = "", signed: bool = False) -> str:
    """ "IQM [low, high]" (no interval for a single episode); a dagger when an improvement's interval includes 0."""
    if not e or e["n"] == 0:
        return "n/a"
    value = ("+" if signed and e["iqm"] > 0 else "") + num(e["iqm"]) + unit
    if e["n"] < 2:
        return value
    text = f"{value} [{num(e['low'])}, {num(e['high'])}]"
    return text + (DAGGER if signed and e["includes_zero"] else "")


def _title(name: str, summary: dict) -> str:
    return f"{stats.METRIC_BY_NAME[name].title} [{summary['sources'][name]}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def comparison_table(summary: dict, names: tuple[str, ...]) -> str:
    agg = summary["aggregates"]
    return _table(
        ["policy"] + [_title(n, summary) for n in names], [[lab] + [cell(agg[lab][n]) for n in names] for lab in agg]
    )


def improvement_table(summary: dict, baseline: str, names: tuple[str, ...] = IMPROVEMENT_TABLE) -> str:
    imp = summary["improvements"][baseline]
    header = ["policy"]
    for n in names:
        m = stats.METRIC_BY_NAME[n]
        header.append(f"{m.title} {'%' if m.relative else 'diff'}")
    rows = [
        [lab] + [cell(d.get(n), "%" if stats.METRIC_BY_NAME[n].relative else "", signed=True) for n in names]
        for lab, d in imp.items()
    ]
    return _table(header, rows)


def zero_statements(summary: dict, baseline: str) -> list[str]:
    """One line per policy on the headline figures, saying when an interval includes zero."""
    lines = []
    for lab, d in summary["improvements"][baseline].items():
        for n in ("energy_per_token_mj", "mean_loss"):
            e = d.get(n)
            if not e or e["n"] < 2:
                continue
            what = stats.METRIC_BY_NAME[n].title
            verdict = (
                "the interval includes zero: no difference shown"
                if e["includes_zero"]
                else ("better" if e["iqm"] > 0 else "worse") + ", the interval excludes zero"
            )
            lines.append(
                f"- {lab} vs {baseline}, {what}: {num(e['iqm'])}% [{num(e['low'])}, {num(e['high'])}]: {verdict}."
            )
    return lines


# ----- report.md and the console ---------------------------------------------------------------------------------
def _device_text(env: dict, dev: dict) -> str:
    """Where an env's hardware figures came from, in words."""
    if env["source"] == "measured":
        return f"measured on {dev.get('gpu', 'a GPU')} (driver {dev.get('driver', 'unknown')})"
    return (
        f"simulated {env['gpu_spec']} (telemetry.SimulatedGpu fitted to a measured H100) at deployment scale; runtime "
        f"on {dev['cpu']} ({dev['host']})"
    )


def _deployment_text(dep: dict) -> str:
    return (
        f"d_model {dep['d_model']}, {dep['layers']} layers, {dep['heads']} heads, seq {dep['seq_len']}, expert widths "
        f"{dep['expert_widths']}, {dep['dtype']}, {dep['batch_tokens']} tokens per launch"
    )


def setup_lines(summary: dict) -> list[str]:
    """The report's date, device, deployment scale and envs: the device and the deployment scale once when every env
    shares them, else on each env's line (the single-GPU suite's dense twin has its own deployment scale)."""
    envs, dev = summary["envs"], summary["device"]
    devices = {name: _device_text(e, dev) for name, e in envs.items()}
    deployments = {name: _deployment_text(e["deployment"]) for name, e in envs.items()}
    one_device, one_deployment = len(set(devices.values())) == 1, len(set(deployments.values())) == 1
    software = f"torch {dev['torch']}, Python {dev['python']}"
    device = next(iter(devices.values())) if one_device else "each env's, below"
    lines = [f"- Date: {summary['date']}", f"- Device: {device}; {software}"]
    if one_deployment:
        lines.append(f"- Deployment scale: {next(iter(deployments.values()))}")
    for name, e in envs.items():
        m = e["model"]
        own = "" if one_device else f"; device: {devices[name]}"
        own += "" if one_deployment else f"; deployment scale: {deployments[name]}"
        lines.append(
            f"- Env `{name}`: runtime model `{m['preset_name']}` (d_model {m['d_model']}, {m['n_layers']} "
            f"layers, {m['num_experts']} experts top-{m['top_k']}, widths {m['expert_widths']}), "
            f"{e['runtime_tokens']} runtime tokens per interval, {e['episode_intervals']} intervals of "
            f"{e['interval_s']} s, split `{e['split']}`, workload {e['workload']['profile']} at load "
            f"{e['workload']['load']}, domains {e['domains'][0]} -> {e['domains'][1]}{own}"
        )
    return lines


def sources_text(summary: dict) -> str:
    """What each source label in the summary means (`evaluate_stats.SOURCE_NOTES`), in the order of first use."""
    labels = list(dict.fromkeys(summary["sources"].values()))
    return "Sources: " + ", ".join(f"`{x}` ({stats.SOURCE_NOTES.get(x, 'see summary.json')})" for x in labels) + "."


def episodes_text(summary: dict) -> tuple[str, int]:
    """(the report's line on the episodes, the most any policy ran): those that ran, and those asked for when a
    time budget stopped the run short. A summary from before `episodes_run` counts every asked episode."""
    each = summary["episodes_per_seed"]
    asked = len(summary["seeds"]) * each
    counts = sorted(set((summary.get("episodes_run") or {"": asked}).values()))
    if counts == [asked]:
        return f"{asked} per policy (seeds {summary['seeds']}, {each} each)", asked
    ran = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    seeds_run = summary.get("seeds_run", summary["seeds"])
    return (
        f"{ran} per policy ran (seeds {seeds_run}) of the {asked} asked (seeds {summary['seeds']}, {each} each)",
        counts[-1],
    )


def write_report(out: Path, summary: dict) -> str:
    """Write report.md (setup, comparison tables, improvement tables, plots) and return its text."""
    lines = [f"# {summary['title']}", ""] + setup_lines(summary)
    episodes, n_eps = episodes_text(summary)
    lines += [
        f"- Episodes: {episodes}, paired: every policy saw the same streams, shift points, workloads and initial "
        "temperatures",
        f"- Statistic: {summary['statistic']}. {sources_text(summary)}",
        "",
    ]
    notes = list(summary.get("notes", []))
    if n_eps < 2:
        more = "add --seeds" if len(summary["seeds"]) * summary["episodes_per_seed"] < 2 else "`--resume` runs more"
        notes.append(f"One episode per policy: no intervals (they need at least two paired episodes; {more}).")
    lines += [f"> {note}" for note in notes] + ([""] if notes else [])
    lines += [
        "## Comparison",
        "",
        "Energy, heat and speed (IQM [CI]):",
        "",
        comparison_table(summary, HARDWARE_TABLE),
        "",
        "Quality, test-time training and the cost model (IQM [CI]):",
        "",
        comparison_table(summary, QUALITY_TABLE),
        "",
    ]
    for base in summary["improvements"]:
        lines += (
            [
                f"## Improvement over {base}",
                "",
                "Paired per episode, then IQM [CI]; positive is better (less energy, heat, latency, loss; more "
                f"throughput). `%`: relative to {base}; `diff`: in the figure's unit. {DAGGER}: the interval "
                "includes zero, so no difference is shown at this confidence.",
                "",
                improvement_table(summary, base),
                "",
            ]
            + zero_statements(summary, base)
            + [""]
        )
    plots = sorted(p.name for p in out.glob("*.png") if p.name not in SECTION_PLOTS)
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    text = "\n".join(lines)
    with atomic_open(out / "report.md") as f:
        f.write(text)
    return text


def console_table(summary: dict) -> str:
    text = "Comparison (IQM [CI] over episodes):\n" + comparison_table(summary, CONSOLE_TABLE)
    for base in summary["improvements"]:
        text += f"\n\nImprovement over {base} (positive is better; {DAGGER}: interval includes zero):\n"
        text += improvement_table(
            summary,
            base,
            ("energy_per_token_mj", "peak_temperature_c", "latency_p95_ms", "mean_loss", "slo_violations"),
        )
    return text


# ----- the original system's outputs -----------------------------------------------------------------------------
def router_tables(summary: dict, baseline: str) -> str:
    """The router README's three tables (energy, thermal, throughput) with the paired improvement over baseline."""
    agg, imp = summary["aggregates"], summary["improvements"].get(baseline, {})
    src = summary["sources"]["energy_per_token_mj"]

    def improvement(lab: str, name: str, unit: str) -> str:
        return "-" if lab == baseline else cell(imp[lab][name], unit, signed=True)

    tables = [
        (
            f"Energy efficiency [{src}]",
            ["Router", "Energy (mJ/token)", "Power (W)", "Improvement (energy)"],
            lambda lab: [
                cell(agg[lab]["energy_per_token_mj"]),
                cell(agg[lab]["mean_power_w"]),
                improvement(lab, "energy_per_token_mj", "%"),
            ],
        ),
        (
            f"Thermal [{src}]",
            ["Router", "Max temp (C)", "Temp rise (C)", "Improvement (temp rise, C)"],
            lambda lab: [
                cell(agg[lab]["peak_temperature_c"]),
                cell(agg[lab]["temperature_rise_c"]),
                improvement(lab, "temperature_rise_c", ""),
            ],
        ),
        (
            f"Throughput [{src}]",
            [
                "Router",
                "Throughput (tokens/s)",
                "Interval time per served token (ms)",
                "p95 latency (ms)",
                "Improvement (p95 latency)",
            ],
            lambda lab: [
                cell(agg[lab]["throughput_tokens_per_s"]),
                cell(agg[lab]["time_per_token_ms"]),
                cell(agg[lab]["latency_p95_ms"]),
                improvement(lab, "latency_p95_ms", "%"),
            ],
        ),
    ]
    text = [
        "## Router comparison tables",
        "",
        f"IQM [CI]; improvements are paired per episode over `{baseline}`, positive is better; {DAGGER}: the "
        "interval includes zero. Throughput at deployment scale follows the demand unless a policy falls "
        "behind, and so does the interval time per served token (1000 / throughput: not a latency), so latency "
        "separates policies more than either does.",
        "",
    ]
    for title, header, row in tables:
        text += [f"### {title}", "", _table(header, [[lab] + row(lab) for lab in agg]), ""]
    return "\n".join(text)


def append_section(out: Path, text: str) -> None:
    """Add a section at the end of report.md, rewriting it atomically (`atomic_open`)."""
    path = out / "report.md"
    saved = path.read_text() if path.exists() else ""
    with atomic_open(path) as f:
        f.write(saved + "\n" + text.rstrip() + "\n")


def ttt_allocation(out: Path, summary: dict, rows: list[dict], base: str, reps: int, confidence: float) -> str:
    """TTT compute (tokens trained per served runtime token, relative to `base`) against loss after the shift and
    energy per token: ttt_allocation.csv, ttt_allocation.png and a report section."""
    labels = list(summary["aggregates"])
    ratio = {
        lab: [
            stats._float(r["ttt_tokens_trained"]) / max(stats._float(r["runtime_tokens"]), 1.0)
            for r in rows
            if r["label"] == lab
        ]
        for lab in labels
    }
    unit = float(np.mean(ratio[base])) if ratio.get(base) and np.mean(ratio[base]) > 0 else 0.0
    scale = f"x {base}" if unit else "tokens per token"  # relative to the 1x schedule when it trained at all
    unit = unit or 1.0
    names = ("loss_after_shift", "mean_loss", "energy_per_token_mj")
    table, points = [], {}
    for lab in labels:
        mine = [r for r in rows if r["label"] == lab]
        matrix = np.array([[x / unit] + [stats._float(r[n]) for n in names] for x, r in zip(ratio[lab], mine)])
        est = stats.interval_estimates(matrix.reshape(len(mine), 1 + len(names)), reps, confidence)
        points[lab] = est
        table.append([lab] + [cell(e.to_dict()) for e in est])
    header = [
        "policy",
        f"TTT compute ({scale})",
        "loss after shift (nats) [measured]",
        "loss (nats) [measured]",
        f"energy/token (mJ) [{summary['sources']['energy_per_token_mj']}]",
    ]
    with atomic_open(out / "ttt_allocation.csv", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy"] + [f"{c}_{k}" for c in ("compute_x",) + names for k in ("iqm", "low", "high")] + ["n"])
        for lab, est in points.items():
            w.writerow([lab] + [v for e in est for v in (e.iqm, e.low, e.high)] + [est[0].n])
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, k, name in (
        (axes[0], 1, "loss after the shift (nats) [measured]"),
        (axes[1], 3, f"energy per token (mJ) [{summary['sources']['energy_per_token_mj']}]"),
    ):
        fixed = [lab for lab in labels if lab.startswith("fixed_") or lab == "no_ttt"]
        xs = [points[lab][0].iqm for lab in fixed]
        ax.plot(xs, [points[lab][k].iqm for lab in fixed], "k-", lw=1, alpha=0.5, label="fixed schedules")
        for i, lab in enumerate(labels):
            ex, ey = points[lab][0], points[lab][k]
            if not ex.n or not math.isfinite(ey.iqm):
                continue
            ax.errorbar(
                ex.iqm,
                ey.iqm,
                xerr=[[ex.iqm - ex.low], [ex.high - ex.iqm]],
                yerr=[[ey.iqm - ey.low], [ey.high - ey.iqm]],
                fmt="o" if lab in fixed else "*",
                ms=6 if lab in fixed else 12,
                capsize=3,
                color=f"C{i}",
                label=lab,
            )
        ax.set_xlabel(f"TTT compute: tokens trained per served token ({scale}) [measured]")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("TTT allocation: fixed 1x/2x/4x schedules vs adaptive (IQM with bootstrap intervals)", fontsize=10)
    fig.tight_layout()
    save_png(fig, out / "ttt_allocation.png")
    plt.close(fig)
    rel = (
        f"relative to `{base}` ({unit:.3f} tokens per token)"
        if scale.startswith("x")
        else f"absolute (`{base}` trained nothing: episodes shorter than its update interval)"
    )
    text = "\n".join(
        [
            "## TTT allocation: compute vs loss",
            "",
            f"TTT compute = tokens trained per served runtime token, {rel}. The heuristic also biases "
            "routing; the fixed schedules do not.",
            "",
            _table(header, table),
            "",
            "![ttt_allocation.png](ttt_allocation.png)",
            "",
        ]
    )
    append_section(out, text)
    print("\n" + text)
    return text


SINGLE_GPU_METRICS = (
    ("latency_p50_ms", "Latency (p50 interval, ms)"),
    ("energy_per_token_mj", "Energy per token (mJ)"),
    ("mean_power_w", "Power (W)"),
    ("peak_temperature_c", "Temperature (peak, C)"),
    ("throughput_tokens_per_s", "Throughput (tokens/s)"),
    ("ttt_updates", "TTT updates"),
)


MEMORY_FIGURES = {  # name in the env facts: (source, console title, what it is)
    "runtime_weights_gb": (
        "predicted",
        "runtime weights",
        "parameter bytes of the runtime model (arithmetic, not a measurement)",
    ),
    "deployment_weights_gb": ("predicted", "deployment weights", "weights of the model at deployment scale"),
    "cuda_peak_allocated_gb": (
        "measured",
        "CUDA peak (process-wide)",
        "torch's allocator peak in the evaluating process once this env was built: process-wide, so every env "
        "built before it counts too",
    ),
}
FIGURE_KEYS = ("iqm", "low", "high", "mean", "std", "source")


def single_gpu_figures(summary: dict, rows: list[dict], lab: str) -> dict:
    """{figure: its IQM, interval, mean, std and source} of one system, each labelled by the backend its own
    episodes ran on (a ValueError if they and its env disagree), and the memory figures of its env
    (`MEMORY_FIGURES`; the CUDA peak only where it was taken)."""
    env_name = summary["policies"][lab]["env"]
    env = summary["envs"][env_name]
    mine = [r for r in rows if r["label"] == lab]
    backend = stats.hardware_backend(mine, {env_name: env["source"]})
    figures = {}
    for m in stats.METRICS:
        values = np.array([stats._float(r[m.name]) for r in mine])
        values = values[np.isfinite(values)]
        figures[m.name] = {
            **summary["aggregates"][lab][m.name],
            "mean": float(values.mean()) if len(values) else math.nan,
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "source": m.source_on(backend),
        }
    for name, (source, _, note) in MEMORY_FIGURES.items():
        if env.get(name) is not None:
            figures[name] = {"value": env[name], "source": source, "note": note}
    return figures


def single_gpu_lines(summary: dict, detail: dict, base: str) -> list[str]:
    """The original test's console comparison: each system's figures with their sources, then the improvements."""
    agg, imp = summary["aggregates"], summary["improvements"].get(base, {})
    lines = ["", "=" * 60, "RESULTS COMPARISON", "=" * 60]
    for lab, info in detail.items():
        met = info["metrics"]
        lat = met["latency_p50_ms"]
        memory = ", ".join(
            f"{num(met[n]['value'])} GB {title} [{met[n]['source']}]"
            for n, (_, title, _) in MEMORY_FIGURES.items()
            if n in met
        )
        lines += [
            f"\n{lab}:",
            f"  Latency: {num(lat['mean'])} +- {num(lat['std'])} ms (p50 interval latency) [{lat['source']}]",
            f"  Memory: {memory or 'n/a'}",
        ]
        for name, title in SINGLE_GPU_METRICS[1:]:
            lines.append(f"  {title}: {cell(agg[lab][name])} [{met[name]['source']}]")
        pred, error = met["kcm_pred_energy_per_token_mj"], met["kcm_energy_error_pct"]
        kcm_vs = error["source"].replace("predicted vs", "KCM vs")
        lines.append(
            f"  Predicted energy per token: {cell(agg[lab]['kcm_pred_energy_per_token_mj'])} mJ [{pred['source']}], "
            f"prediction error {cell(agg[lab]['kcm_energy_error_pct'])} % [{kcm_vs}]"
        )
    lines += [
        "",
        "=" * 60,
        f"IMPROVEMENTS OVER BASELINE ({base}; positive is better, {DAGGER}: interval includes 0)",
        "=" * 60,
    ]
    for lab, d in imp.items():
        lines.append(f"\n{lab} vs {base}:")
        for n in ("latency_p95_ms", "mean_power_w", "energy_per_token_mj", "throughput_tokens_per_s", "mean_loss"):
            lines.append(f"  {stats.METRIC_BY_NAME[n].title}: {cell(d[n], '%', signed=True)}")
    return lines


def single_gpu_outputs(out: Path, summary: dict, rows: list[dict], params: dict, kcm_ok: bool) -> None:
    """The original single-GPU/HPC test's files: comparison_results.csv, comparison_plot.png, hpc_results.json,
    hpc_summary.json (kernel_cost_model_test_results.json comes from `python -m kernels.cost_model`)."""
    agg, systems = summary["aggregates"], list(summary["aggregates"])
    env_of = {lab: summary["envs"][summary["policies"][lab]["env"]] for lab in systems}
    detail = {
        lab: {
            "spec": summary["policies"][lab]["spec"],
            "model": env_of[lab]["model"],
            "deployment": env_of[lab]["deployment"],
            "metrics": single_gpu_figures(summary, rows, lab),
        }
        for lab in systems
    }
    with atomic_open(out / "comparison_results.csv", newline="") as f:
        w = csv.writer(f)
        names = [m.name for m in stats.METRICS]
        w.writerow(
            ["system", "hardware_source"]
            + [f"{n}{k}" for n in MEMORY_FIGURES for k in ("", "_source")]
            + [f"{n}_{k}" for n in names for k in FIGURE_KEYS]
        )
        for lab in systems:
            met = detail[lab]["metrics"]
            w.writerow(
                [lab, detail[lab]["metrics"]["energy_per_token_mj"]["source"]]
                + [met.get(n, {}).get(k, "") for n in MEMORY_FIGURES for k in ("value", "source")]
                + [met[n][k] for n in names for k in FIGURE_KEYS]
            )
    with atomic_open(out / "hpc_results.json") as f:
        f.write(json.dumps(detail, indent=1) + "\n")
    base = systems[0]
    imp = summary["improvements"].get(base, {})
    kcm_file = out / "kernel_cost_model_test_results.json"
    hpc = {
        "hardware": {**summary["device"], "gpu_spec": env_of[base]["gpu_spec"], "source": env_of[base]["source"]},
        "test_parameters": {
            **params,
            "systems": {lab: detail[lab]["spec"] for lab in systems},
            "models": {lab: env_of[lab]["model"] for lab in systems},
        },
        "overall_results": {lab: {n: agg[lab][n]["iqm"] for n, _ in SINGLE_GPU_METRICS} for lab in systems},
        "sources": {lab: {n: detail[lab]["metrics"][n]["source"] for n, _ in SINGLE_GPU_METRICS} for lab in systems},
        "improvements_over_baseline": {
            lab: {
                n: imp[lab][n]["iqm"]
                for n in ("energy_per_token_mj", "mean_power_w", "latency_p95_ms", "throughput_tokens_per_s")
                if n in imp[lab]
            }
            for lab in imp
        },
        "kernel_cost_model": {
            "available": kcm_ok and kcm_file.exists(),
            "results_file": kcm_file.name,
            "energy_prediction_error_pct": {lab: agg[lab]["kcm_energy_error_pct"]["iqm"] for lab in systems},
            "energy_prediction_error_source": {
                lab: detail[lab]["metrics"]["kcm_energy_error_pct"]["source"] for lab in systems
            },
        },
        "statistic": summary["statistic"],
    }
    with atomic_open(out / "hpc_summary.json") as f:
        f.write(json.dumps(hpc, indent=1, default=str) + "\n")
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, (name, title) in zip(axes.flat, SINGLE_GPU_METRICS):
        est = [agg[lab][name] for lab in systems]
        ax.bar(
            range(len(systems)),
            [e["iqm"] for e in est],
            color=[f"C{i}" for i in range(len(systems))],
            yerr=[[e["iqm"] - e["low"] for e in est], [e["high"] - e["iqm"] for e in est]],
            capsize=4,
        )
        ax.set_xticks(range(len(systems)), [lab.replace(" + ", "\n+ ") for lab in systems], fontsize=7)
        ax.set_title(f"{title} [{summary['sources'][name]}]", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        positive = [e["iqm"] for e in est if e["iqm"] > 0]
        if positive and max(positive) > 50 * min(positive):
            ax.set_yscale("log")
    fig.suptitle("Single-GPU comparison (IQM with bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    save_png(fig, out / "comparison_plot.png")
    plt.close(fig)
    lines = single_gpu_lines(summary, detail, base)
    print("\n".join(lines))
    append_section(
        out,
        "## Single-GPU comparison\n\n![comparison_plot.png](comparison_plot.png)\n\nFiles: "
        "comparison_results.csv, hpc_results.json, hpc_summary.json, "
        "kernel_cost_model_test_results.json.\n",
    )
