"""evaluate.py: parsing, paired seeding, report files, resume, and clear errors (the statistics and the figures'
sources: `test_evaluate_stats.py`; reruns and resumes of a finished run: `test_evaluate_reruns.py`).

Tiny preset, episodes of a few intervals, few bootstrap replications: the whole file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from evaluate_testing import ROOT, TINY, read_csv, tiny_env

import evaluate
import evaluate_suites

SPLIT_CASES = [("a,b(x=1,y=2),c", ["a", "b(x=1,y=2)", "c"]), (" a , ,b ", ["a", "b"]), ("f(g(1,2),3)", ["f(g(1,2),3)"])]
SEED_CASES = [("0", [0]), ("0,3,5-7", [0, 3, 5, 6, 7]), ("2-4", [2, 3, 4])]
BAD_SEEDS = [  # (text, what the message says)
    ("", "--seeds '' must name distinct seeds"),
    ("4-2", "'4-2' is not N or N-M (M >= N)"),
    ("a", "'a' is not N or N-M"),
    ("1,1", "--seeds '1,1' must name distinct seeds"),
    ("0-", "'0-' is not N or N-M"),
]
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


# ----- parsing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), SPLIT_CASES)
def test_split_top_level(text, expected):
    assert evaluate.split_top_level(text) == expected


@pytest.mark.parametrize(("text", "expected"), SEED_CASES)
def test_parse_seeds(text, expected):
    assert evaluate.parse_seeds(text) == expected


@pytest.mark.parametrize(("text", "message"), BAD_SEEDS)
def test_bad_seeds(text, message):
    with pytest.raises(evaluate.UsageError, match=re.escape(message)):
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
        (["--seeds", "0,4294968"], "--seeds '0,4294968' reaches episode seed 4294968000 (1000 x seed + episode)"),
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
        (["--suite", "main", "--baselines", "kcm_greedy"], "--baselines is for a --policies comparison"),
        (["--report-only", "--baselines", "kcm_greedy"], "--report-only rebuilds the run's report with the baselines"),
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
    # your own controller by entry point: parsed here, imported when it is built
    spec = evaluate.parse_policy("cool=examples.custom_controller:Thermostat(max_bias=0.25)", names)
    assert (spec.label, spec.name, spec.kwargs, spec.kind) == (
        "cool", "examples.custom_controller:Thermostat", {"max_bias": 0.25}, "controller")  # fmt: skip
    assert evaluate.parse_policy("pkg.mod:Name", names).label == "pkg.mod:Name"
    with pytest.raises(evaluate.UsageError, match=r"is not NAME, NAME\(KEY=VALUE,...\), MODULE:NAME"):
        evaluate.parse_policy("pkg.mod:", names)



def test_a_glob_of_training_runs_is_one_spec_per_run(tmp_path):
    names = evaluate.CONTROLLER_NAMES
    for run in ("ppo_s1", "ppo_s0", "other"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "best_model.zip").write_bytes(b"")
    specs = evaluate.parse_policies(f"warm=ppo:{tmp_path}/ppo_s*/best_model.zip,no_control", names)
    assert [(s.label, s.path) for s in specs] == [
        ("warm@ppo_s0", f"{tmp_path}/ppo_s0/best_model.zip"),
        ("warm@ppo_s1", f"{tmp_path}/ppo_s1/best_model.zip"),
        ("no_control", ""),
    ]
    assert evaluate.run_groups([s.label for s in specs]) == {"warm": ["warm@ppo_s0", "warm@ppo_s1"]}
    assert evaluate.run_groups(["a@x", "b@y", "plain"]) == {}  # one run is no group
    unlabelled = evaluate.parse_policies(f"ppo:{tmp_path}/ppo_s*,ppo:{tmp_path}/oth*", names)
    assert [s.label for s in unlabelled] == ["ppo_s*@ppo_s0", "ppo_s*@ppo_s1", "oth*@other"]  # two methods, not one
    assert evaluate.run_groups([s.label for s in unlabelled]) == {"ppo_s*": ["ppo_s*@ppo_s0", "ppo_s*@ppo_s1"]}
    with pytest.raises(evaluate.UsageError, match=r"label 'v@1' holds '@', which marks a training run"):
        evaluate.parse_policies("v@1=no_control,v@2=heuristic", names)  # two controllers are no runs of one method
    with pytest.raises(evaluate.UsageError, match=r"the label 'a@b' may not hold '@'"):
        evaluate.parse_policies(f"a@b=ppo:{tmp_path}/ppo_s*", names)
    (tmp_path / "lr=3e-4_s0").mkdir()
    (tmp_path / "lr=3e-4_s0" / "best_model.zip").write_bytes(b"")
    spec = evaluate.parse_policies(f"lr=ppo:{tmp_path}/lr=*/best_model.zip", names)[0]  # a folder name with '='
    assert (spec.label, spec.path, spec.algo) == ("lr@lr=3e-4_s0", f"{tmp_path}/lr=3e-4_s0/best_model.zip", "ppo")
    with pytest.raises(evaluate.UsageError, match=r"no saved model matches .*/nothing_\*"):
        evaluate.parse_policies(f"w=ppo:{tmp_path}/nothing_*", names)
    (tmp_path / "ppo_s0" / "last_model.zip").write_bytes(b"")
    with pytest.raises(evaluate.UsageError, match=r"do not each have their own run folder"):
        evaluate.parse_policies(f"w=ppo:{tmp_path}/ppo_s0/*.zip", names)


def test_best_models_in_train_agents_layout_are_labelled_by_their_run(tmp_path):
    """train_agent.py saves the best model as RUN/best/best_model.zip: a glob of them pools the runs, each named by
    the folder its wildcard matched, and one alone is labelled by its run, not `best`."""
    names = evaluate.CONTROLLER_NAMES
    for run in ("ppo_kcm_s1", "ppo_kcm_s0"):
        (tmp_path / run / "best").mkdir(parents=True)
        (tmp_path / run / "best" / "best_model.zip").write_bytes(b"")
    specs = evaluate.parse_policies(f"warm=ppo:{tmp_path}/ppo_kcm_s*/best/best_model.zip", names)
    assert [(s.label, s.path) for s in specs] == [
        ("warm@ppo_kcm_s0", f"{tmp_path}/ppo_kcm_s0/best/best_model.zip"),
        ("warm@ppo_kcm_s1", f"{tmp_path}/ppo_kcm_s1/best/best_model.zip"),
    ]
    assert evaluate.run_groups([s.label for s in specs]) == {"warm": ["warm@ppo_kcm_s0", "warm@ppo_kcm_s1"]}
    assert evaluate.parse_policy(f"ppo:{tmp_path}/ppo_kcm_s0/best/best_model.zip", names).label == "ppo:ppo_kcm_s0"
    nested = evaluate.parse_policies(f"ppo:{tmp_path}/*/best/*.zip", names)
    assert [s.label for s in nested] == ["*@ppo_kcm_s0", "*@ppo_kcm_s1"]
    for method in ("a", "b"):  # two methods' seed folders under one wildcard: each run is its own folder ...
        for seed in ("s0", "s1"):
            (tmp_path / "sweep" / method / seed).mkdir(parents=True)
            (tmp_path / "sweep" / method / seed / "model.zip").write_bytes(b"")
    one = evaluate.parse_policies(f"w=ppo:{tmp_path}/sweep/a/s*/model.zip", names)
    assert [s.label for s in one] == ["w@s0", "w@s1"]
    both = evaluate.parse_policies(f"w=ppo:{tmp_path}/sweep/*/s*/model.zip", names)  # ... named apart by the wildcards
    assert [s.label for s in both] == ["w@a-s0", "w@a-s1", "w@b-s0", "w@b-s1"]


def test_baselines_name_policies_of_the_comparison(tmp_path, capsys):
    specs = evaluate.parse_policies("kcm_greedy,no_control,heuristic", evaluate.CONTROLLER_NAMES)
    given = ["--policies", "kcm_greedy,no_control,heuristic"]
    assert evaluate.compare_baselines(evaluate.parse_args(given), specs) == ("no_control", "heuristic")
    args = evaluate.parse_args([*given, "--baselines", "kcm_greedy,no_control"])
    assert evaluate.compare_baselines(args, specs) == ("kcm_greedy", "no_control")
    out = tmp_path / "out"
    assert evaluate.main(["--policies", "no_control", "--baselines", "kcm_greedy", "--out", str(out), *TINY]) == 2
    assert "--baselines 'kcm_greedy' is not one of the policies' labels ['no_control']" in capsys.readouterr().err
    assert not out.exists()  # refused before --out was made


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
        ([], "was trained on observations of shape (63,); this env's are (43,) (another preset or expert count? A "
             "suite's trained policy is set with --trained-policy PATH, or '' for none)"),
        ([], "Its run served preset 'default', this env 'tiny': pass --preset default."),  # from its config.yaml
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


@pytest.mark.parametrize("given", ["run/best/best_model.zip", "run"])
def test_a_suites_trained_policy_may_be_sac(tmp_path, given):
    """README trains SAC, TD3 and A2C too: --trained-policy takes their models, not only PPO's (it was loaded as
    ppo, and the error said to load it as sac, which the flag could not)."""
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("args: {algo: sac}\n")  # the run's algorithm, as infer_algo reads it
    (tmp_path / "run" / "best" / "best_model.zip").write_bytes(b"")
    args = dataclasses.replace(evaluate.Args(), trained_policy=str(tmp_path / given))
    [spec] = evaluate_suites.committed_policy(args)
    assert (spec.algo, spec.label, spec.text) == ("sac", "sac_committed", f"sac:{tmp_path / given}")
    assert evaluate_suites.committed_policy(args, "adaptive_learned")[0].label == "adaptive_learned"


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


def test_no_progress_hides_pretrainings_bar_too(tmp_path, monkeypatch, capsys):
    """On a cold cache the served model is pretrained before the episodes; --no-progress must reach it (tqdm's
    pretraining bar showed in logs of runs that asked for none). Pretraining is faked: an untrained model saved."""
    import importlib

    import moe_runtime as mr

    pretrain_module = importlib.import_module("moe_runtime.pretrain")
    asked = []

    def fake_pretrain(cfg, pcfg):
        asked.append(pcfg.progress)
        path = mr.checkpoint_path(cfg, pcfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        mr.save_checkpoint(path, mr.MoETransformer(cfg), mr.load_corpus(pcfg.corpus).sha256)

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    monkeypatch.setenv("MOE_RL_CACHE", str(tmp_path / "cache"))
    argv = ["--policies", "no_control", "--seeds", "0", *TINY, "--bootstrap-reps", "50"]
    assert evaluate.main([*argv, "--out", str(tmp_path / "quiet")]) == 0
    assert asked == [False], "pretrained once, with no bar"
    assert "pretrain tiny" not in capsys.readouterr().err
    assert evaluate.main([*argv, "--out", str(tmp_path / "again")]) == 0
    assert asked == [False], "the cached model is served the second time"
