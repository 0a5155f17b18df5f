"""The original system's output files for `evaluate.py`'s suites, beside report.md: the router tables, the
TTT-allocation Pareto curve and the single-GPU comparison files. Like `evaluate_report`, it reads what
`evaluate.py` wrote and writes files; it runs nothing.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

import evaluate_stats as stats
from evaluate_plots import pyplot, save_png
from evaluate_report import DAGGER, cell, markdown_table, num
from evaluate_rows import atomic_open


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
        text += [f"### {title}", "", markdown_table(header, [[lab] + row(lab) for lab in agg]), ""]
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
    idle = [lab for lab in labels if lab.startswith("fixed_") and not np.mean(ratio[lab] or [0.0]) > 0] or [base]
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
        f"TTT compute ({scale}) [measured]",
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
        ax.set_xlabel(f"TTT compute ({scale}) [measured]")  # a longer label ran into the other panel's
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
        else "absolute ({} trained nothing: episodes shorter than {} update interval)".format(
            ", ".join(f"`{lab}`" for lab in idle), "its" if len(idle) == 1 else "their"
        )
    )
    text = "\n".join(
        [
            "## TTT allocation: compute vs loss",
            "",
            f"TTT compute = tokens trained per served runtime token, {rel}. The heuristic also biases "
            "routing; the fixed schedules do not.",
            "",
            markdown_table(header, table),
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
            f"  Latency: {num(lat['mean'])} +- {num(lat['std'])} ms (p50 interval latency, mean +- sd over episodes) "
            f"[{lat['source']}]",
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
