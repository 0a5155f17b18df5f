"""evaluate_stats and the report's provenance: the statistics on known cases (IQM, bootstrap coverage, paired
improvements, per-episode metrics) and the source every figure carries on each backend; no episodes run here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from evaluate_testing import read_csv, tiny_env

import evaluate
import evaluate_stats as stats
import evaluate_suites


# ----- statistics --------------------------------------------------------------------------------------------------
def test_iqm_known_cases():
    from rliable import metrics

    x = np.arange(1.0, 9.0)  # middle half: 3, 4, 5, 6
    assert stats.iqm(x) == pytest.approx(4.5)
    assert stats.iqm(x[:, None])[0] == pytest.approx(metrics.aggregate_iqm(x[:, None]))
    assert stats.iqm(np.array([1.0, 2.0, 3.0, 4.0, 1000.0])) == pytest.approx(3.0)  # robust to the outlier
    est = stats.interval_estimates(np.column_stack([x, 10 * x]), reps=200)
    assert [e.iqm for e in est] == pytest.approx([4.5, 45.0])
    assert all(e.low <= e.iqm <= e.high and e.n == 8 for e in est)


def test_bootstrap_interval_covers_the_true_value_at_about_the_nominal_rate():
    """400 independent samples of 20 normal draws as 400 columns: one stratified bootstrap resamples each column
    independently, so it gives 400 independent 95% intervals for the IQM (true value 0 for a symmetric law)."""
    rng = np.random.default_rng(0)
    samples = rng.normal(0.0, 1.0, size=(20, 400))
    est = stats.interval_estimates(samples, reps=500, confidence=0.95, seed=1)
    coverage = np.mean([e.low <= 0.0 <= e.high for e in est])
    assert 0.88 <= coverage <= 0.99, coverage
    again = stats.interval_estimates(samples[:, :5], reps=500, confidence=0.95, seed=1)
    assert again == stats.interval_estimates(samples[:, :5], reps=500, confidence=0.95, seed=1)  # reproducible


def test_nan_columns_and_paired_improvements():
    est = stats.interval_estimates(np.array([[1.0, math.nan], [2.0, 5.0], [3.0, math.nan]]), reps=50)
    assert est[0].n == 3 and est[1].n == 1 and est[1].iqm == 5.0
    assert stats.interval_estimates(np.full((2, 1), math.nan), reps=50)[0].n == 0
    # lower is better: 8 vs 10 is a 20% improvement; higher is better: 12 vs 10 is +2 absolute
    assert stats.paired_differences(np.array([8.0]), np.array([10.0]), True, True) == pytest.approx([20.0])
    assert stats.paired_differences(np.array([12.0]), np.array([10.0]), False, False) == pytest.approx([2.0])
    rng = np.random.default_rng(0)
    base = rng.normal(10.0, 1.0, 30)
    rows = [{"label": "b", "episode_seed": i, "energy_per_token_mj": v} for i, v in enumerate(base)]
    rows += [{"label": "better", "episode_seed": i, "energy_per_token_mj": 0.9 * v} for i, v in enumerate(base)]
    rows += [
        {"label": "same", "episode_seed": i, "energy_per_token_mj": v + rng.normal(0, 0.5)} for i, v in enumerate(base)
    ]
    metric = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    imp = stats.improvements(rows, ["b", "better", "same"], "b", metric, reps=300)
    assert imp["better"]["energy_per_token_mj"].iqm == pytest.approx(10.0)
    assert not imp["better"]["energy_per_token_mj"].includes_zero
    assert imp["same"]["energy_per_token_mj"].includes_zero


def test_episode_metrics_known_trace():
    step = dict(
        power_w=400.0,
        peak_power_w=500.0,
        temperature_c=60.0,
        peak_temperature_c=61.0,
        sm_clock_mhz=1500.0,
        latency_ms=10.0,
        energy_j=400.0,
        tokens=1000,
        runtime_tokens=128,
        loss=2.0,
        domain="prose",
        ttt_updates=0,
        ttt_tokens_trained=0,
        ttt_share_of_busy=0.0,
        throttled_share=0.5,
        slo_violated=False,
        kcm_pred_energy_j=440.0,
        kcm_pred_latency_ms=100.0,
        demand_tokens=1000.0,
        ttt_frequency_tokens=0,
        ttt_chunk_tokens=512,
        expert_load=[1.0, 1.0],
        reward=-1.0,
    )
    after = dict(
        step,
        loss=3.0,
        domain="code",
        latency_ms=30.0,
        peak_temperature_c=65.0,
        slo_violated=True,
        ttt_updates=1,
        ttt_tokens_trained=512,
        ttt_share_of_busy=0.2,
    )
    trace = {"steps": [step, after], "interval_s": 1.0, "domains": ["prose", "code"], "initial_temperature_c": 55.0}
    m = stats.episode_metrics(trace)
    assert m["energy_per_token_mj"] == pytest.approx(400.0)  # 800 J / 2000 tokens
    assert m["mean_power_w"] == pytest.approx(400.0)
    assert (m["peak_temperature_c"], m["temperature_rise_c"]) == (65.0, 10.0)
    assert m["time_throttled_s"] == pytest.approx(1.0)
    assert m["latency_p50_ms"] == pytest.approx(20.0) and m["latency_p95_ms"] == pytest.approx(29.0)
    assert m["throughput_tokens_per_s"] == pytest.approx(1000.0)
    assert (m["mean_loss"], m["loss_after_shift"], m["slo_violations"], m["ttt_updates"]) == (2.5, 3.0, 1, 1)
    assert m["perplexity"] == pytest.approx(math.exp(2.5))
    assert m["ttt_overhead_pct"] == pytest.approx(10.0)
    assert m["time_per_token_ms"] == pytest.approx(1.0)  # 2 intervals of 1 s for 2000 tokens: 1000 / throughput
    assert "latency_per_token_ms" not in m  # the interval time per served token is no latency
    assert m["kcm_energy_error_pct"] == pytest.approx(10.0)
    assert m["shift_interval"] == 1


def test_episode_metrics_weight_by_time_tokens_and_busy_time():
    """Two unlike 1 s intervals, by hand:
    - mean power is time-weighted: 400 J at 400 W (1 s) and 150 J at 200 W (0.75 s): 550 J / 1.75 s = 314.29 W (the
      plain mean of the powers would be 300 W);
    - per-token figures count the episode's served tokens (1000 + 500): energy 550 J -> 366.67 mJ/token, the KCM's
      predicted 300 + 360 J -> 440 mJ/token, interval time 2 s -> 1.3333 ms/token, throughput 750 tokens/s;
    - the TTT share of busy time is weighted by the KCM's busy time: (0 x 100 + 0.2 x 300) / 400 = 15% (unweighted:
      10%);
    - the KCM error: (660 - 550) / 550 = +20%.
    """
    base = dict(
        peak_power_w=500.0, temperature_c=60.0, peak_temperature_c=61.0, sm_clock_mhz=1500.0, latency_ms=10.0,
        runtime_tokens=128, loss=2.0, domain="prose", ttt_updates=0, ttt_tokens_trained=0, throttled_share=0.0,
        slo_violated=False, kcm_pred_latency_ms=100.0, demand_tokens=1000.0, ttt_frequency_tokens=0,
        ttt_chunk_tokens=512, expert_load=[1.0, 1.0], reward=-1.0,
    )  # fmt: skip
    first = dict(base, power_w=400.0, energy_j=400.0, tokens=1000, kcm_pred_energy_j=300.0, ttt_share_of_busy=0.0)
    second = dict(
        base, power_w=200.0, energy_j=150.0, tokens=500, kcm_pred_energy_j=360.0, ttt_share_of_busy=0.2,
        kcm_pred_latency_ms=300.0, domain="code", loss=3.0,
    )  # fmt: skip
    trace = {"steps": [first, second], "interval_s": 1.0, "domains": ["prose", "code"], "initial_temperature_c": 55.0}
    m = stats.episode_metrics(trace)
    assert m["mean_power_w"] == pytest.approx(550.0 / 1.75)
    assert m["energy_per_token_mj"] == pytest.approx(1e3 * 550.0 / 1500.0)
    assert m["kcm_pred_energy_per_token_mj"] == pytest.approx(440.0)
    assert m["time_per_token_ms"] == pytest.approx(2000.0 / 1500.0)
    assert m["throughput_tokens_per_s"] == pytest.approx(750.0)
    assert m["ttt_overhead_pct"] == pytest.approx(15.0)
    assert m["kcm_energy_error_pct"] == pytest.approx(20.0)
    assert m["tokens_served"] == 1500.0
    # three intervals of 0.5 s: the time per token follows the interval count and length
    half = dict(trace, interval_s=0.5, steps=[first, first, first])
    assert stats.episode_metrics(half)["time_per_token_ms"] == pytest.approx(1e3 * 1.5 / 3000.0)


def test_iqm_is_the_mean_of_the_middle_half():
    # 0, 1, 4, 9, 16, 25, 36, 49: a quarter off each end leaves 4, 9, 16, 25
    assert stats.iqm(np.arange(8.0) ** 2) == pytest.approx(13.5)
    assert stats.iqm(np.arange(12.0) ** 2) == pytest.approx(np.mean(np.arange(3.0, 9.0) ** 2))  # 9 .. 64: 199 / 6
    np.testing.assert_allclose(stats.iqm(np.column_stack([np.arange(8.0) ** 2, np.arange(8.0)])), [13.5, 3.5])


def test_relative_improvement_over_a_negative_baseline_divides_by_its_magnitude():
    """A return of -8 against a baseline of -10 (higher is better) is 20% better, not -20%; a cost going from -10 to
    -12 (lower is better) is 20% better too."""
    assert stats.paired_differences(np.array([-8.0]), np.array([-10.0]), False, True) == pytest.approx([20.0])
    assert stats.paired_differences(np.array([-12.0]), np.array([-10.0]), False, True) == pytest.approx([-20.0])
    assert stats.paired_differences(np.array([-12.0]), np.array([-10.0]), True, True) == pytest.approx([20.0])
    d = stats.paired_differences(np.array([-8.0, 5.0, 1.0]), np.array([-10.0, 0.0, 2.0]), False, True)
    assert d[0] == pytest.approx(20.0) and math.isnan(d[1]) and d[2] == pytest.approx(-50.0)


def _run_rows(per_run: dict[str, list[float]], baseline: list[float]) -> list[dict]:
    """Rows of runs (label: energy/token per episode seed) and a `base` baseline, on seeds 0, 1, ..."""
    rows = [{"label": "base", "episode_seed": s, "energy_per_token_mj": b} for s, b in enumerate(baseline)]
    for label, values in per_run.items():
        rows += [{"label": label, "episode_seed": s, "energy_per_token_mj": v} for s, v in enumerate(values)]
    return rows


def test_across_runs_pools_runs_and_episodes_with_an_interval_over_runs():
    energy = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    baseline = [10.0, 20.0, 40.0]
    same = {f"m@r{k}": [8.0, 16.0, 32.0] for k in range(3)}  # 20% less energy on every seed, in every run
    runs, est = stats.across_runs(_run_rows(same, baseline), list(same), "base", energy, reps=300)
    e = est["energy_per_token_mj"]
    assert runs == list(same) and (e.iqm, e.low, e.high, e.n) == pytest.approx((20.0, 20.0, 20.0, 9))  # no spread
    # runs saving 10, 20, 30, 40% on every seed: each run's IQM is its saving, and their mean 25
    spread = {f"m@r{k}": [b * (1 - 0.1 * (k + 1)) for b in baseline] for k in range(4)}
    e = stats.across_runs(_run_rows(spread, baseline), list(spread), "base", energy, reps=300)[1]["energy_per_token_mj"]
    assert e.iqm == pytest.approx(25.0) and 10.0 <= e.low < 25.0 < e.high <= 40.0 and e.n == 12
    rows = [r for r in _run_rows(spread, baseline) if not (r["label"] == "m@r3" and r["episode_seed"] == 2)]
    e = stats.across_runs(rows, list(spread), "base", energy, reps=300)[1]["energy_per_token_mj"]
    assert e.n == 8  # seed 2 left out: run r3 did not run it
    rows = [r for r in _run_rows(spread, baseline) if r["label"] != "m@r3"]  # r3 ran nothing: pooled without it
    assert stats.across_runs(rows, list(spread), "base", energy, reps=300)[0] == ["m@r0", "m@r1", "m@r2"]
    assert stats.across_runs(rows, ["m@r0"], "base", energy) == ([], {})  # one run: nothing over runs
    assert stats.across_runs(rows, ["m@r0", "m@r1"], "m@r1", energy) == ([], {})  # the baseline is no run of its own


def test_across_runs_point_is_the_mean_of_the_runs_own_iqms():
    """Heavy-tailed episodes: one IQM over all runs x seeds trims differently from each run's own (12 of 50 entries
    at each end, against 2 of 10), and would lie outside every run's IQM here."""
    energy = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    saved = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 60.0, 60.0, 60.0, 60.0]  # % per seed; a few seeds save a lot
    baseline = [100.0] * len(saved)
    runs = {f"m@r{k}": [100.0 - x - 0.1 * k for x in saved] for k in range(5)}
    rows = _run_rows(runs, baseline)
    e = stats.across_runs(rows, list(runs), "base", energy, reps=300)[1]["energy_per_token_mj"]
    own = [float(stats.iqm(np.array(saved) + 0.1 * k, axis=None)) for k in range(5)]
    assert e.iqm == pytest.approx(np.mean(own)) and min(own) <= e.iqm <= max(own)
    pooled = float(stats.iqm(np.concatenate([np.array(saved) + 0.1 * k for k in range(5)]), axis=None))
    assert not min(own) <= pooled <= max(own)  # the case is one where the two differ


def test_across_runs_interval_covers_the_episode_seeds_too():
    """Identical runs whose saving varies over seeds: the runs agree, yet a new set of scenarios would not give the
    same figure, so the interval has width (a bootstrap over runs alone, seeds held fixed, gives none)."""
    energy = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    saved = np.linspace(0.0, 40.0, 20)
    runs = {f"m@r{k}": list(100.0 - saved) for k in range(4)}
    e = stats.across_runs(_run_rows(runs, [100.0] * 20), list(runs), "base", energy, reps=2000)[1]
    e = e["energy_per_token_mj"]
    assert e.iqm == pytest.approx(20.0) and e.low < 16.0 and e.high > 24.0 and e.low > 5.0 and e.high < 35.0, e


def test_across_runs_resamples_whole_runs():
    """Runs that differ by a constant on every one of many seeds: each run is one draw, so the interval is that of a
    mean of 4 draws from {10, 20, 30, 40} (about 25 +- 10; resampling a run per seed, as rliable's stratified
    bootstrap does, averages a run's own effect away: about 25 +- 2 here)."""
    energy = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    baseline = [100.0] * 30
    runs = {f"m@r{k}": [100.0 - saved] * 30 for k, saved in enumerate((10.0, 20.0, 30.0, 40.0))}
    e = stats.across_runs(_run_rows(runs, baseline), list(runs), "base", energy, reps=2000)[1]["energy_per_token_mj"]
    assert e.low <= 16.0 and e.high >= 34.0, e


# ----- provenance: every figure says where it came from -----------------------------------------------------------
SOURCE_CASES = [  # backend: labels that differ from "the backend's own" for the hardware figures
    ("simulated", {"episode_return": "mixed", "ttt_overhead_pct": "predicted",
                   "kcm_energy_error_pct": "predicted vs simulated"}),
    ("measured", {"episode_return": "measured", "ttt_overhead_pct": "measured",
                  "kcm_energy_error_pct": "predicted vs measured"}),
]  # fmt: skip


@pytest.mark.parametrize(("backend", "special"), SOURCE_CASES)
def test_sources_follow_the_backend(backend, special):
    """The return mixes simulated hardware terms with the measured loss on the simulated backend; the TTT share is
    the KCM's there and a measured wall-time share on the GPU; the KCM error says what the KCM was checked against."""
    sources = stats.metric_sources(backend)
    assert set(sources) == {m.name for m in stats.METRICS}
    for name, label in special.items():
        assert sources[name] == label, name
    assert sources["energy_per_token_mj"] == sources["latency_p95_ms"] == backend
    assert sources["mean_loss"] == "measured" and sources["kcm_pred_energy_per_token_mj"] == "predicted"
    assert all(label in stats.SOURCE_NOTES for label in sources.values())  # every label is explained in the report
    with pytest.raises(ValueError, match="unknown hardware backend 'auto'"):
        stats.metric_sources("auto")


def test_episodes_from_two_backends_are_refused():
    rows = [{"label": "a", "episode_seed": 0, "hardware_source": "simulated", "energy_per_token_mj": 1.0},
            {"label": "b", "episode_seed": 0, "hardware_source": "measured", "energy_per_token_mj": 2.0}]  # fmt: skip
    assert stats.hardware_backend(rows[:1], {"main": "simulated"}) == "simulated"
    with pytest.raises(ValueError, match="measured: policy 'b'; simulated: policy 'a'"):
        stats.hardware_backend(rows)
    with pytest.raises(ValueError, match="measured: env 'main'; simulated: policy 'a'"):
        stats.hardware_backend(rows[:1], {"main": "measured"})  # this process's env is not the one the rows ran on
    metric = (stats.METRIC_BY_NAME["energy_per_token_mj"],)
    for aggregate in (stats.summarize, lambda *a, **k: stats.improvements(rows, ["a", "b"], "a", *a[2:], **k)):
        with pytest.raises(ValueError, match="do not share one hardware backend"):
            aggregate(rows, ["a", "b"], metric, reps=50)


def env_facts_of(source: str, dense: bool = False, cuda_peak_gb: float | None = None) -> dict:
    """The facts `evaluate_facts.env_facts` gives for the tiny env (or its dense twin), without building it."""
    import envs
    from evaluate_facts import config_facts

    args = evaluate.Args(preset="tiny", episode_intervals=4, telemetry="simulated")
    kwargs = evaluate.env_kwargs(args)
    kwargs = evaluate_suites.dense_twin(args, kwargs) if dense else kwargs
    facts = config_facts(envs.EnvConfig.from_kwargs(**kwargs), source, "H100", 0.004)
    return facts | ({"cuda_peak_allocated_gb": cuda_peak_gb} if cuda_peak_gb is not None else {})


def fake_summary(envs_: dict[str, dict], policies: dict[str, str], backend: str) -> dict:
    """A summary.json as `evaluate.aggregate` writes it, every figure 1.0 [0.5, 1.5] over 2 episodes."""
    estimate = stats.Estimate(1.0, 0.5, 1.5, 2).to_dict()
    device = dict(date="", host="h", cpu="x86_64", python="3", torch="2", gpu="NVIDIA H100", driver="580")
    return {
        "title": "t", "date": "today", "device": device, "envs": envs_,
        "policies": {lab: {"spec": "no_control", "env": env} for lab, env in policies.items()},
        "seeds": [0, 1], "episodes_per_seed": 1, "statistic": "IQM with 95% stratified-bootstrap intervals (rliable)",
        "sources": stats.metric_sources(backend), "aggregates": {lab: dict.fromkeys(stats.METRIC_BY_NAME, estimate)
                                                                 for lab in policies},
        "improvements": {}, "notes": [],
    }  # fmt: skip


def test_report_describes_each_env_by_its_own_device_and_deployment(tmp_path):
    """Envs with other deployment scales (the single-GPU suite's dense twin) or other backends are not described by
    the first env's."""
    import evaluate_report as report

    dense, moe = env_facts_of("simulated", dense=True), env_facts_of("measured")
    assert dense["deployment"] != moe["deployment"]
    summary = fake_summary({"dense": dense, "moe": moe}, {"d": "dense", "m": "moe"}, "simulated")
    text = report.write_report(tmp_path, summary)
    assert "- Deployment scale:" not in text and "- Device: each env's, below" in text
    for name, facts in (("dense", dense), ("moe", moe)):
        [line] = [x for x in text.splitlines() if x.startswith(f"- Env `{name}`")]
        assert f"expert widths {facts['deployment']['expert_widths']}" in line
        assert ("measured on NVIDIA H100" if facts["source"] == "measured" else "simulated H100") in line
    same = fake_summary({"main": moe}, {"m": "main"}, "measured")
    text = report.write_report(tmp_path, same)
    assert "- Device: measured on NVIDIA H100 (driver 580)" in text and "- Deployment scale: d_model" in text
    assert "`mixed`" not in text and "`predicted vs measured` (the KCM's prediction against the measured" in text


def test_report_names_the_served_weights_and_their_pretraining_losses(tmp_path):
    """The same config and seed pretrain to other weights on another CPU; the report says which ones it served."""
    import evaluate_report as report

    facts = env_facts_of("simulated")
    facts["model"]["provenance"] = dict(checkpoint="default-x.pt", weights_sha256="aa4c60f46b9d", steps=900,
                                        val_loss_prose=2.01573, val_loss_code=2.5745)  # fmt: skip
    summary = fake_summary({"main": facts}, {"a": "main"}, "simulated")
    summary["device"] |= dict(cpu_model="AMD EPYC", torch_cpu_capability="AVX512")  # what the arithmetic ran on
    text = report.write_report(tmp_path, summary)
    assert "; runtime on x86_64 AMD EPYC, AVX512 (h)" in text
    [line] = [x for x in text.splitlines() if x.startswith("- Env `main`")]
    assert ", weights `aa4c60f46b9d` (900 pretraining steps; validation loss prose 2.016, code 2.575 nats))" in line
    del facts["model"]["provenance"]
    assert "weights `" not in report.write_report(tmp_path, fake_summary({"main": facts}, {"a": "main"}, "simulated"))


def test_env_facts_keep_weight_arithmetic_apart_from_a_measured_peak():
    """The runtime's weights are parameter bytes (predicted); only a CUDA allocator peak is measured, and it is
    process-wide, so it has a name of its own."""
    import torch

    from evaluate_facts import env_facts

    env = tiny_env(4)
    try:
        facts = env_facts(env)
        model = env.unwrapped.runtime.model
    finally:
        env.close()
    assert "runtime_memory_gb" not in facts
    assert facts["model"]["provenance"] == model.provenance  # the tiny env serves its pretrained checkpoint
    assert facts["runtime_weights_gb"] == sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    assert (facts["cuda_peak_allocated_gb"] is None) == (not torch.cuda.is_available())


@pytest.mark.parametrize("trained", [0.0, 64.0])  # tokens trained per fixed-schedule episode: none, or some
def test_ttt_allocation_labels_its_compute_and_keeps_the_panels_apart(tmp_path, monkeypatch, capsys, trained):
    """The compute column says its source like the others, and each panel's x label stays within its own panel
    (the long label ran into the next panel's and past the figure's edge)."""
    import evaluate_sections as sections

    labels = ["no_ttt", "fixed_1x", "fixed_2x", "adaptive_heuristic"]
    summary = {"aggregates": dict.fromkeys(labels), "sources": {"energy_per_token_mj": "simulated"}}
    rows = [{"label": lab, "ttt_tokens_trained": 0.0 if lab == "no_ttt" else trained, "runtime_tokens": 1024.0,
             "loss_after_shift": 3.0 + s, "mean_loss": 3.0, "energy_per_token_mj": 0.4 + s}
            for lab in labels for s in (0.0, 0.1)]  # fmt: skip
    figures = []
    monkeypatch.setattr(sections, "save_png", lambda fig, path: figures.append(fig))
    text = sections.ttt_allocation(tmp_path, summary, rows, "fixed_1x", reps=50, confidence=0.95)
    assert "| policy | TTT compute (" in text and ") [measured] | loss after shift (nats) [measured] |" in text
    [fig] = figures
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the layout as save_png draws it
    left, right = (ax.xaxis.label.get_window_extent(renderer) for ax in fig.axes)
    assert 0 <= left.x0 and left.x1 < right.x0 and right.x1 <= fig.bbox.width
    assert all("[measured]" in ax.get_xlabel() for ax in fig.axes)


@pytest.mark.parametrize("backend", ["simulated", "measured"])
def test_single_gpu_outputs_label_every_figure(tmp_path, capsys, backend):
    """Latency with its source, runtime weights as predicted (parameter bytes), the CUDA peak as a process-wide
    measurement, the KCM error against what it was checked with, each system by its own backend."""
    import evaluate_sections as sections

    peak = 1.5 if backend == "measured" else None
    summary = fake_summary({"main": env_facts_of(backend, cuda_peak_gb=peak)}, {"a": "main", "b": "main"}, backend)
    rows = [{"label": lab, "episode_seed": s, "hardware_source": backend, **dict.fromkeys(stats.METRIC_BY_NAME, 1.0)}
            for lab in ("a", "b") for s in (0, 1)]  # fmt: skip
    sections.single_gpu_outputs(tmp_path, summary, rows, {}, kcm_ok=False)
    printed = capsys.readouterr().out
    assert f"(p50 interval latency, mean +- sd over episodes) [{backend}]" in printed  # the others are IQM [CI]
    assert "GB runtime weights [predicted]" in printed and "runtime [measured]" not in printed
    assert f"% [KCM vs {backend}]" in printed and "% [predicted]" not in printed
    assert ("GB CUDA peak (process-wide) [measured]" in printed) == (backend == "measured")
    detail = json.loads((tmp_path / "hpc_results.json").read_text())["a"]["metrics"]
    assert detail["runtime_weights_gb"]["source"] == "predicted" and "runtime_memory_gb" not in detail
    assert detail["episode_return"]["source"] == ("mixed" if backend == "simulated" else "measured")
    [row] = [r for r in read_csv(tmp_path / "comparison_results.csv") if r["system"] == "b"]
    assert row["hardware_source"] == backend and row["kcm_energy_error_pct_source"] == f"predicted vs {backend}"
    assert row["runtime_weights_gb_source"] == "predicted"
    rows[0]["hardware_source"] = "measured" if backend == "simulated" else "simulated"
    with pytest.raises(ValueError, match="do not share one hardware backend"):
        sections.single_gpu_outputs(tmp_path, summary, rows, {}, kcm_ok=False)
