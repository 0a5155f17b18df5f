"""Reports for `evaluate.py`: report.md and the console table; the original system's output files (router tables,
TTT-allocation Pareto curve, single-GPU comparison files) are `evaluate_sections`, the episode plots
`evaluate_plots`.

Everything here reads what `evaluate.py` wrote (summary.json's dict, episodes.csv rows, traces/*.json) and writes
files; it runs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import evaluate_stats as stats
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
RUNS_TABLE = ("episode_return", "energy_per_token_mj", "mean_loss", "latency_p95_ms", "peak_temperature_c")
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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def comparison_table(summary: dict, names: tuple[str, ...]) -> str:
    agg = summary["aggregates"]
    return markdown_table(
        ["policy"] + [_title(n, summary) for n in names], [[lab] + [cell(agg[lab][n]) for n in names] for lab in agg]
    )


def compared_baselines(summary: dict) -> list[str]:
    """The baselines some other policy is compared with (a run of the baseline alone has nothing to show)."""
    return [base for base, rows in summary["improvements"].items() if rows]


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
    return markdown_table(header, rows)


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


def runs_section(summary: dict) -> list[str]:
    """report.md's "Across training runs": for each group of training runs (`LABEL=ppo:GLOB`) and baseline, the
    mean of the runs' own IQMs of the paired improvement with an interval over runs and episode seeds
    (`evaluate_stats.across_runs`), and each run's own IQM (from the improvement tables)."""
    groups = summary.get("run_groups") or {}
    if not groups:
        return []
    lines = [
        "## Across training runs",
        "",
        "Paired improvement per run and episode; each run's IQM over the seeds every run played, then the mean of "
        "those over the runs (each run's figure listed below the tables is over its own episodes: the same seeds when "
        "every run finished). The interval is a two-level bootstrap that resamples the training runs and the episode "
        "seeds, each with replacement (a new training run and new scenarios are both draws): wide with few runs or "
        f"few seeds. Positive is better; {DAGGER}: the interval includes zero.",
        "",
    ]
    for base in summary["improvements"]:
        header = ["method", "runs"] + [
            f"{stats.METRIC_BY_NAME[n].title} {'%' if stats.METRIC_BY_NAME[n].relative else 'diff'}" for n in RUNS_TABLE
        ]
        rows = []
        for group, g in groups.items():
            pooled = g["improvements"].get(base)
            if not pooled:
                continue
            pooled_runs = g["pooled"][base]
            n_runs = str(len(pooled_runs)) + ("" if len(pooled_runs) == len(g["runs"]) else f" of {len(g['runs'])}")
            units = ["%" if stats.METRIC_BY_NAME[n].relative else "" for n in RUNS_TABLE]
            rows.append([group, n_runs] + [cell(pooled.get(n), u, signed=True) for n, u in zip(RUNS_TABLE, units)])
        if not rows:
            continue
        lines += [f"Over {base}:", "", markdown_table(header, rows), ""]
        for group, g in groups.items():
            own = summary["improvements"][base]
            pooled_runs = [run for run in g["pooled"].get(base, []) if run in own]
            each = [f"{run}: {num(own[run]['episode_return']['iqm'])}" for run in pooled_runs]
            if each:
                lines.append(f"- {group} vs {base}, each run's return diff (IQM over its episodes): {'; '.join(each)}.")
        lines.append("")
    return lines


# ----- report.md and the console ---------------------------------------------------------------------------------
def _device_text(env: dict, dev: dict) -> str:
    """Where an env's hardware figures came from, in words."""
    if env["source"] == "measured":
        return f"measured on {dev.get('gpu', 'a GPU')} (driver {dev.get('driver', 'unknown')})"
    return (
        f"simulated {env['gpu_spec']} (telemetry.SimulatedGpu fitted to a measured H100) at deployment scale; runtime "
        f"on {dev['cpu']}{_cpu_text(dev)} ({dev['host']})"
    )


def _cpu_text(dev: dict) -> str:
    """' AMD EPYC, AVX512': the CPU's model and the instruction set torch's CPU kernels use, where recorded (the
    runtime's matmuls round differently from one to another, and so pretrain to other weights)."""
    parts = [dev[k] for k in ("cpu_model", "torch_cpu_capability") if dev.get(k)]
    return (" " + ", ".join(parts)) if parts else ""


def _deployment_text(dep: dict) -> str:
    return (
        f"d_model {dep['d_model']}, {dep['layers']} layers, {dep['heads']} heads, seq {dep['seq_len']}, expert widths "
        f"{dep['expert_widths']}, {dep['dtype']}, {dep['batch_tokens']} tokens per launch"
    )


def _weights_text(model: dict) -> str:
    """', weights `aa4c60f46b9d` (900 pretraining steps; validation loss prose 2.016, code 2.575 nats)', or ''.

    The same config and seed pretrain to other weights on another CPU, so two reports' losses are comparable only
    where their weights are the same."""
    p = model.get("provenance") or {}
    if "weights_sha256" not in p:
        return ""
    losses = ""
    if "val_loss_prose" in p and "val_loss_code" in p:
        losses = f"; validation loss prose {p['val_loss_prose']:.3f}, code {p['val_loss_code']:.3f} nats"
    steps = f"{p['steps']} pretraining steps" if "steps" in p else "from a checkpoint"
    return f", weights `{p['weights_sha256']}` ({steps}{losses})"


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
            f"layers, {m['num_experts']} experts top-{m['top_k']}, widths {m['expert_widths']}{_weights_text(m)}), "
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
    for base in compared_baselines(summary):
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
    lines += runs_section(summary)
    plots = sorted(p.name for p in out.glob("*.png") if p.name not in SECTION_PLOTS)
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    text = "\n".join(lines)
    with atomic_open(out / "report.md") as f:
        f.write(text)
    return text


def console_table(summary: dict) -> str:
    text = "Comparison (IQM [CI] over episodes):\n" + comparison_table(summary, CONSOLE_TABLE)
    for base in compared_baselines(summary):
        text += f"\n\nImprovement over {base} (positive is better; {DAGGER}: interval includes zero):\n"
        text += improvement_table(
            summary,
            base,
            ("energy_per_token_mj", "peak_temperature_c", "latency_p95_ms", "mean_loss", "slo_violations"),
        )
    return text
