"""evaluate.py: parsing, paired seeding, the statistics on known cases, report files, resume, and clear errors (reruns
and resumes of a finished run: `test_evaluate_reruns.py`).

Tiny preset, episodes of a few intervals, few bootstrap replications: the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from evaluate_testing import ROOT, TINY, read_csv

import evaluate
import evaluate_stats as stats
import evaluate_suites

SPLIT_CASES = [("a,b(x=1,y=2),c", ["a", "b(x=1,y=2)", "c"]), (" a , ,b ", ["a", "b"]), ("f(g(1,2),3)", ["f(g(1,2),3)"])]
SEED_CASES = [("0", [0]), ("0,3,5-7", [0, 3, 5, 6, 7]), ("2-4", [2, 3, 4])]
BAD_SEEDS = ["", "4-2", "a", "1,1", "0-"]
BAD_SPECS = [
    ("nonsense", "unknown controller 'nonsense'"),
    ("ppo:/no/such/model.zip", "no saved model at /no/such/model.zip"),
    ("heuristic(", "unbalanced"),
    ("load_balance(0.1)", "is not KEY=VALUE"),
    ("heuristic,heuristic", "must be unique"),
    ("9lives", "is not NAME"),
]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def tiny_env(intervals: int):
    args = evaluate.Args(preset="tiny", episode_intervals=intervals, telemetry="simulated", torch_threads=1)
    return evaluate.make_env(evaluate.env_kwargs(args))


# ----- parsing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_top_level(text, expected):
    assert evaluate.split_top_level(text) == expected


@pytest.mark.parametrize(("text", "expected"), SEED_CASES)
def test_parse_seeds(text, expected):
    assert evaluate.parse_seeds(text) == expected


@pytest.mark.parametrize("text", BAD_SEEDS)
def test_bad_seeds(text):
    with pytest.raises(evaluate.UsageError):
        evaluate.parse_seeds(text)


@pytest.mark.parametrize("suite", ["main", "routers"])
def test_bad_seeds_fail_at_parsing(suite):
    # the main suite trains PPO for minutes before its episodes: a bad --seeds must not wait for that
    with pytest.raises(evaluate.UsageError, match="'4-2' is not N or N-M"):
        evaluate.parse_args(["--suite", suite, "--seeds", "4-2"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workload", "spiky"], "Workload.profile 'spiky'"),
        (["--gpu", "H900"], "unknown GPU 'H900'"),
        (["--checkpoint", "/no/such/model.pt"], "'/no/such/model.pt' does not exist"),
        (["--split", "dev"], "split 'dev'"),
        (["--train-seconds", "-5"], "--train-seconds must be >= 0"),
        (["--max-wall-s", "-1"], "--max-wall-s must be >= 0"),
        (["--episodes", "1001"], "--episodes must be <= 1000"),
        (["--interval-s", "inf"], "--interval-s must be a positive, finite number of seconds, got inf"),
        (["--resume", "--overwrite"], "--resume continues the run in --out and --overwrite starts it over"),
        (["--suite", "routers", "--part", "bench"], "--part 'bench' is for --suite gpu-full only"),
        (
            ["--suite", "gpu-full", "--part", "nope"],
            "needs --part, one of bench, calibrate, compare (each fits 10 minutes), got 'nope'",
        ),  # before the CUDA check
        (["--policy-device", "bogus"], "--policy-device 'bogus' is not a torch device"),
        (["--resume"], "--resume needs --out"),  # not a fresh run in a new folder
        (["--suite", "single-gpu", "--policies", "heuristic"], "--suite single-gpu runs its own policies"),
        (["--trained-policy", "/no/such/policy.zip"], "--trained-policy '/no/such/policy.zip' does not exist"),
    ],
)
def test_bad_env_and_run_settings_fail_at_parsing(argv, message):
    with pytest.raises(evaluate.UsageError, match=re.escape(message)):
        evaluate.parse_args(argv)


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    docs = evaluate._field_comments(evaluate.Args)
    assert set(docs) == {f.name for f in dataclasses.fields(evaluate.Args)}  # a field without its comment fails
    for name, doc in docs.items():
        assert doc and "".join(f"{doc} (default: ".split()) in help_text, name


def test_policy_grammar(tmp_path):
    names = evaluate.CONTROLLER_NAMES
    spec = evaluate.parse_policy("lb2=load_balance(step=0.02)", names)
    assert (spec.label, spec.name, spec.kwargs, spec.kind) == ("lb2", "load_balance", {"step": 0.02}, "controller")
    spec = evaluate.parse_policy("fixed_ttt(frequency_tokens=1024,chunk_tokens=256)", names)
    assert spec.kwargs == {"frequency_tokens": 1024, "chunk_tokens": 256}
    model = tmp_path / "run" / "model.zip"
    model.parent.mkdir()
    model.write_bytes(b"")
    spec = evaluate.parse_policy(f"ppo:{model}", names)
    assert (spec.kind, spec.algo, spec.path, spec.label) == ("sb3", "ppo", str(model), "ppo:run")
    assert evaluate.parse_policy(f"mine=sb3:{model}", names).algo == ""


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_bad_policy_spec_is_a_usage_error(text, message):
    with pytest.raises(evaluate.UsageError, match=message.replace("(", r"\(")):
        evaluate.parse_policies(text, evaluate.CONTROLLER_NAMES)


@pytest.mark.parametrize("spec", ["heuristic,nonsense", "ppo:/no/such/model.zip"])
def test_cli_bad_spec_exits_cleanly(tmp_path, spec):
    proc = run_cli("--policies", spec, "--out", str(tmp_path / "out"), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a bad spec


def test_bad_controller_argument_and_gpu_suite_without_cuda(tmp_path, capsys):
    rc = evaluate.main(["--policies", "load_balance(stepp=1)", "--out", str(tmp_path / "a"), *TINY])
    assert rc == 2 and "stepp" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert evaluate.main(["--suite", "gpu", "--out", str(tmp_path / "g")]) == 2
        assert "needs an NVIDIA GPU with CUDA" in capsys.readouterr().err
        assert not (tmp_path / "g").exists()
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / "args.json").write_text('{"suite_run": "gpu", "seeds": "0-2"}')  # a GPU run's, copied here
        for part in ([], ["--part", "bench"]):
            suite = "gpu-full" if part else "gpu"
            assert evaluate.main(["--suite", suite, *part, "--out", str(tmp_path / "g"), "--overwrite"]) == 2
        assert (tmp_path / "g" / "args.json").read_text() == '{"suite_run": "gpu", "seeds": "0-2"}'
        assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["args.json"]


# ----- paired seeding ----------------------------------------------------------------------------------------------
def test_policies_on_one_seed_see_identical_streams():
    import agents

    env = tiny_env(5)
    try:
        runs = {}
        for name in ("no_control", "heuristic", "random"):
            for seed in (3, 4):
                runs[name, seed] = evaluate.run_episode(env, agents.make_controller(name, env), seed)
                runs[name, seed]["shift_tokens_env"] = env.unwrapped.shift_tokens
    finally:
        env.close()

    def stream(t):
        return (
            [s["domain"] for s in t["steps"]],
            [s["demand_tokens"] for s in t["steps"]],
            [s["runtime_tokens"] for s in t["steps"]],
            t["shift_tokens"],
            t["initial_temperature_c"],
        )

    for seed in (3, 4):
        reference = stream(runs["no_control", seed])
        for name in ("heuristic", "random"):
            assert stream(runs[name, seed]) == reference, name
    assert stream(runs["no_control", 3]) != stream(runs["no_control", 4])  # another seed, another episode
    # the policies did act differently on the same stream
    assert [s["expert_load"] for s in runs["random", 3]["steps"]] != [
        s["expert_load"] for s in runs["no_control", 3]["steps"]
    ]


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
    assert facts["runtime_weights_gb"] == sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    assert (facts["cuda_peak_allocated_gb"] is None) == (not torch.cuda.is_available())


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
    assert f"(p50 interval latency) [{backend}]" in printed
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


# ----- end to end: files, resume ---------------------------------------------------------------------------------
def test_cli_writes_parseable_report_files(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("--policies", "heuristic,no_control", "--seeds", "0-1", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["aggregates"]) == {"heuristic", "no_control"}
    assert summary["sources"]["energy_per_token_mj"] == "simulated"
    assert summary["sources"]["mean_loss"] == "measured"
    assert summary["sources"]["kcm_energy_error_pct"] == "predicted vs simulated"
    e = summary["improvements"]["no_control"]["heuristic"]["energy_per_token_mj"]
    assert e["n"] == 2 and e["low"] <= e["iqm"] <= e["high"] and isinstance(e["includes_zero"], bool)
    rows = read_csv(out / "episodes.csv")
    assert len(rows) == 4 and tuple(rows[0]) == evaluate.COLUMNS
    assert {(r["label"], r["episode_seed"]) for r in rows} == {
        (p, s) for p in ("heuristic", "no_control") for s in ("0", "1000")
    }
    text = (out / "report.md").read_text()
    for needle in (
        "## Comparison",
        "## Improvement over no_control",
        "Deployment scale: d_model",
        "Date: ",
        "simulated H100",
        "| heuristic |",
        "interval time/served token (ms) [simulated]",
        "`predicted` (the kernel cost model, KCM)",
    ):
        assert needle in text, needle
    assert "latency/token" not in text
    for png in ("pareto.png", "traces.png", "expert_load.png", "ttt_activity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    assert "Comparison (IQM [CI] over episodes)" in proc.stdout


def test_interrupted_run_resumes_without_repeating_rows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["--policies", "no_control,kcm_greedy", "--seeds", "0-1", "--out", str(out), *TINY]
    real, calls = evaluate.run_episode, []

    def crash_on_third(*a, **k):
        calls.append(a[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "run_episode", crash_on_third)
    assert evaluate.main(argv) == 130
    first = read_csv(out / "episodes.csv")
    assert len(first) == 2  # the two finished episodes survived the crash
    assert evaluate.main(argv) == 2  # refuses to mix runs without --resume
    assert "--resume" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(evaluate, "run_episode", real)
    assert evaluate.main([*argv, "--resume"]) == 0
    rows = read_csv(out / "episodes.csv")
    assert len(rows) == 4 and rows[:2] == first  # finished rows kept as they were, only the rest ran
    assert len({(r["label"], r["episode_seed"]) for r in rows}) == 4
    assert json.loads((out / "summary.json").read_text())["aggregates"]["kcm_greedy"]["mean_loss"]["n"] == 2
    # a resume that reuses a label for another policy would pair its new episodes with the old policy's
    assert evaluate.main([*argv, "--resume", "--policies", "no_control,kcm_greedy=load_balance"]) == 2
    assert "kcm_greedy: 'kcm_greedy' (saved) vs 'load_balance'" in capsys.readouterr().err
    assert read_csv(out / "episodes.csv") == rows

    # The report can be rebuilt from the rows alone (as for a GPU run whose aggregation failed there).
    before = json.loads((out / "summary.json").read_text())
    for name in ("summary.json", "report.md", "pareto.png"):
        (out / name).unlink()
    assert evaluate.main(["--out", str(out), "--report-only"]) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["aggregates"] == before["aggregates"] and after["device"] == before["device"]
    assert "rebuilt from episodes.csv" in (out / "report.md").read_text()
    assert (out / "pareto.png").exists()
    assert evaluate.main(["--out", str(tmp_path / "nothing"), "--report-only"]) == 2
    assert "episodes.csv" in capsys.readouterr().err


def test_missing_rliable_stops_before_any_episode(tmp_path, monkeypatch, capsys):
    def broken():
        raise RuntimeError("cannot import rliable (ImportError: pytz)")

    monkeypatch.setattr(evaluate.stats, "require_rliable", broken)
    out = tmp_path / "run"
    assert evaluate.main(["--policies", "no_control", "--seeds", "0", "--out", str(out), *TINY]) == 2
    assert "cannot import rliable" in capsys.readouterr().err
    assert not (out / "episodes.csv").exists()


def test_saved_policies_run_and_a_foreign_one_is_refused(tmp_path, capsys):
    import gymnasium as gym
    from stable_baselines3 import PPO

    env = tiny_env(4)
    PPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu").learn(8).save(tmp_path / "ok.zip")
    env.close()
    PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=8, batch_size=8, device="cpu").save(tmp_path / "pendulum.zip")
    out = tmp_path / "run"
    rc = evaluate.main(
        ["--policies", f"no_control,mine=ppo:{tmp_path / 'ok.zip'}", "--seeds", "0", "--out", str(out), *TINY]
    )
    assert rc == 0
    assert {r["label"] for r in read_csv(out / "episodes.csv")} == {"no_control", "mine"}
    assert "One episode per policy: no intervals" in (out / "report.md").read_text()
    rc = evaluate.main(["--policies", f"ppo:{tmp_path / 'pendulum.zip'}", "--out", str(tmp_path / "bad"), *TINY])
    assert rc == 2 and "was trained on observations of shape (3,)" in capsys.readouterr().err


def test_main_suite_without_a_trained_policy_says_so(tmp_path):
    out = tmp_path / "main"
    rc = evaluate.main(["--suite", "main", "--train-seconds", "0", "--trained-policy", "", "--seeds", "0-1",
                        "--out", str(out), *TINY])  # fmt: skip
    assert rc == 0
    text = (out / "report.md").read_text()
    assert "No committed trained policy" in text and "| heuristic |" in text and "| no_control |" in text


# ----- suites and --out -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "was trained on observations of shape (63,); this env's are (43,)"),
        (["--trained-policy", "", "--policies", "load_balance(stepp=1)"], "stepp"),
    ],
)
def test_main_suite_checks_its_policies_before_training(tmp_path, monkeypatch, capsys, extra, message):
    trained = []
    monkeypatch.setattr(evaluate_suites, "train_short_run", lambda *a, **k: trained.append(a) or [])
    committed = ROOT / "results" / "ppo_kcm_warm" / "best_model.zip"  # trained on the default preset
    argv = ["--suite", "main", "--trained-policy", str(committed), "--seeds", "0", "--out", str(tmp_path / "m")]
    assert evaluate.main([*argv, *TINY, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not trained


@pytest.mark.parametrize("under", [False, True])
def test_out_that_is_a_file_is_a_usage_error(tmp_path, capsys, under):
    path = tmp_path / "results.txt"
    path.write_text("keep")
    out = path / "run" if under else path
    assert evaluate.main(["--policies", "no_control", "--seeds", "0", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out}") and err.count("\n") == 1
    assert path.read_text() == "keep"


def test_the_suites_find_the_repository_files_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = evaluate.Args()
    [spec] = evaluate_suites.committed_policy(args)  # the default, a path relative to the repository
    assert spec.text == f"ppo:{args.trained_policy}"  # as given: a resume elsewhere sees the same policy
    assert Path(spec.path).is_file() and Path(spec.path).is_absolute()
    (tmp_path / "mine.zip").write_bytes(b"")  # a file of that name here is the user's own
    assert evaluate_suites.committed_policy(dataclasses.replace(args, trained_policy="mine.zip"))[0].path == "mine.zip"
    assert evaluate_suites.committed_policy(dataclasses.replace(args, trained_policy="no/such.zip")) == []


def test_unusable_cache_and_read_only_out_fail_before_the_run(tmp_path, monkeypatch):
    from evaluate_rows import check_out

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("MOE_RL_CACHE", str(tmp_path / "afile"))
    with pytest.raises(
        evaluate.UsageError, match=re.escape(f"MOE_RL_CACHE={tmp_path}/afile: {tmp_path}/afile is a file")
    ):
        evaluate.parse_args(["--preset", "tiny"])
    args = evaluate.parse_args(["--report-only"])  # no env settings checked: the cache is not read
    real = os.access  # a read-only mount: stubbed, since root writes through permission bits
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    with pytest.raises(evaluate.UsageError, match=re.escape(f"--out {tmp_path}/run: {tmp_path} is not writable")):
        check_out(tmp_path / "run", args, "compare")


def test_unreadable_episodes_csv_and_trace_files_are_named(tmp_path, capsys):
    from evaluate_plots import load_traces
    from evaluate_rows import split_rows

    (tmp_path / "episodes.csv").write_bytes(b"\x00\xff x\n")
    with pytest.raises(evaluate.UsageError, match="episodes.csv is not a text CSV of evaluate.py"):
        split_rows(tmp_path / "episodes.csv")
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "p__1.json").write_text('{"x": [1]}')
    (tmp_path / "traces" / "p__2.json").write_text('{"x": [1,')  # cut short
    assert load_traces(tmp_path, ["p"], lambda label: label) == {"p": [{"x": [1]}]}
    assert f"left the unreadable trace {tmp_path}/traces/p__2.json out of the plots" in capsys.readouterr().out
