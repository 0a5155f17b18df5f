"""evaluate.py on a finished run: a refused rerun or overwrite keeps it, a resume with other settings is refused, a
torn last row runs again, and --report-only rebuilds each suite's report as the run wrote it, names damaged files
and keeps the saved report on a failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evaluate_testing import TINY, read_csv

import evaluate
import evaluate_stats as stats

RUN = ["--policies", "no_control", "--seeds", "0-1", *TINY]  # two episodes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert evaluate.main([*RUN, "--out", str(out)]) == 0
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def whole(row: dict) -> bool:
    """Every column there and no more, the figures numbers."""
    if None in row or any(row.get(k) in (None, "") for k in evaluate.COLUMNS):
        return False
    try:
        return all(isinstance(float(row[m.name]), float) for m in stats.METRICS)
    except ValueError:
        return False


def test_a_refused_rerun_leaves_the_saved_args(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    saved = (out / "args.json").read_bytes()
    assert evaluate.main(["--policies", "heuristic", "--seeds", "3", "--out", str(out), *TINY]) == 2
    assert "episodes.csv exists: pass --resume" in capsys.readouterr().err
    assert (out / "args.json").read_bytes() == saved
    import torch

    if not torch.cuda.is_available():  # gpu-full's bench part runs no episodes: not refused, args.json kept
        assert evaluate.main(["--suite", "gpu-full", "--part", "bench", "--out", str(out)]) == 2
        assert "needs an NVIDIA GPU" in capsys.readouterr().err
        assert (out / "args.json").read_bytes() == saved
    assert evaluate.main(["--out", str(out), "--report-only"]) == 0
    assert json.loads((out / "summary.json").read_text())["seeds"] == [0, 1]


@pytest.mark.parametrize("bad", ["fixed_ttt(foo=1)", "ppo:{junk}"])  # a bad argument, an unloadable model
def test_a_refused_overwrite_deletes_nothing(finished_run, tmp_path, capsys, bad):
    out = copy_run(finished_run, tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    policies = f"no_control,{bad.format(junk=tmp_path / 'junk.zip')}"
    assert evaluate.main([*RUN, "--out", str(out), "--overwrite", "--policies", policies]) == 2
    assert capsys.readouterr().err.startswith("error: policy ")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # episodes, traces, args.json


def test_resume_with_other_episode_settings_is_refused(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    before = {n: (out / n).read_bytes() for n in ("args.json", "episodes.csv")}
    argv = [*RUN, "--out", str(out), "--resume", "--seeds", "0-2"]
    assert evaluate.main([*argv, "--episode-intervals", "3", "--load", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume: ") and err.count("\n") == 1
    assert "--episode-intervals 4 (now 3)" in err and "--load 0.6 (now 1.5)" in err and "--overwrite" in err
    assert {n: (out / n).read_bytes() for n in before} == before
    assert evaluate.main([*argv, "--suite", "routers"]) == 2
    assert "--suite 'compare' (now 'routers')" in capsys.readouterr().err
    # a resume may add seeds, and change the statistics and presentation
    assert evaluate.main([*argv, "--bootstrap-reps", "50", "--progress"]) == 0
    rows = read_csv(out / "episodes.csv")
    assert [r["episode_seed"] for r in rows] == ["0", "1000", "2000"]
    assert json.loads((out / "args.json").read_text())["seeds"] == "0-2"


TORN = {
    "cut after wall_time_s": lambda line: ",".join(line.split(",")[: evaluate.COLUMNS.index("wall_time_s") + 1]),
    "a non-numeric figure": lambda line: (
        ",".join("x" if i == len(evaluate.ID_COLUMNS) else v for i, v in enumerate(line.split(","))) + "\r\n"
    ),
    "no line end": lambda line: line,
}


@pytest.mark.parametrize("damage", list(TORN))
def test_resume_runs_a_torn_last_row_again(finished_run, tmp_path, capsys, damage):
    out = copy_run(finished_run, tmp_path)
    csv_path = out / "episodes.csv"
    lines = csv_path.read_bytes().decode().split("\r\n")
    assert lines[-1] == "" and len(lines) == 4  # header, two rows
    csv_path.write_bytes(("\r\n".join(lines[:2]) + "\r\n" + TORN[damage](lines[2])).encode())
    capsys.readouterr()
    assert evaluate.main([*RUN, "--out", str(out), "--resume"]) == 0
    assert "1 incomplete row(s)" in capsys.readouterr().out
    rows = read_csv(csv_path)
    assert len(rows) == 2 and all(whole(r) for r in rows), rows
    assert csv_path.read_bytes().decode().split("\r\n")[:2] == lines[:2]  # the whole row kept as it was
    assert [r["episode_seed"] for r in rows] == ["0", "1000"] and csv_path.read_bytes().endswith(b"\r\n")
    assert len(read_csv(out / "episodes.dropped.csv")) == 1  # the torn row is set aside, not lost
    assert json.loads((out / "summary.json").read_text())["aggregates"]["no_control"]["mean_loss"]["n"] == 2


@pytest.mark.parametrize("damaged", ["args.json", "run_facts.json"])
def test_report_only_names_a_damaged_file(finished_run, tmp_path, capsys, damaged):
    out = copy_run(finished_run, tmp_path)
    (out / damaged).write_text('{"seeds": ')
    assert evaluate.main(["--out", str(out), "--report-only"]) == 2
    assert f"cannot read {out / damaged}" in capsys.readouterr().err


def test_report_only_that_fails_mid_plot_keeps_the_saved_report(finished_run, tmp_path, monkeypatch):
    """Report files are written atomically: a failure while a plot is saved (here a full disk) leaves every file saved
    before whole (the half-written PNG never replaces the old one) and no temporary file beside them."""
    import matplotlib.figure

    out = copy_run(finished_run, tmp_path)
    saved = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".md")}
    assert "traces.png" in saved and "report.md" in saved

    def crash_mid_write(fig, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        evaluate.main(["--out", str(out), "--report-only"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".md")} == saved
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_run_with_a_renamed_column_is_read_and_resumed(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    csv_path = out / "episodes.csv"
    header, rest = csv_path.read_text().split("\n", 1)
    assert "time_per_token_ms" in header
    csv_path.write_text(header.replace("time_per_token_ms", "latency_per_token_ms") + "\n" + rest)  # as written before
    assert evaluate.main(["--out", str(out), "--report-only"]) == 0
    times = json.loads((out / "summary.json").read_text())["aggregates"]["no_control"]["time_per_token_ms"]
    assert times["n"] == 2 and times["iqm"] > 0
    assert evaluate.main(["--policies", "no_control", "--seeds", "0-2", *TINY, "--out", str(out), "--resume"]) == 0
    rows = read_csv(csv_path)
    assert [r["episode_seed"] for r in rows] == ["0", "1000", "2000"] and all(whole(r) for r in rows)


# suite: what its report has that a report with the default title, baselines and no notes or section lacks
SUITE_REPORTS = {
    "routers": ["# Router comparison", "## Improvement over EnergyAwareTTTRouter", "## Router comparison tables"],
    "ttt-allocation": ["# TTT allocation", "## Improvement over fixed_1x", "## TTT allocation: compute vs loss",
                       "(`fixed_1x`, `fixed_2x`, `fixed_4x` trained nothing: episodes shorter than their update"],
    "main": ["# Main comparison (held-out seeds)", "> No committed trained policy at ``: evaluated without it.",
             "## Improvement over kcm_greedy"],
}
BASELINES = {"routers": 2, "ttt-allocation": 2, "main": 3}  # main's third: the committed policy's teacher


@pytest.mark.parametrize("suite", list(SUITE_REPORTS))
def test_report_only_rebuilds_the_suites_own_report(tmp_path, suite):
    """The rebuild keeps the run's title, baselines, notes and the suite's section: the same report.md but for its
    date and a title that says it was rebuilt, and the same improvements and notes in summary.json."""
    out = tmp_path / "run"
    argv = ["--suite", suite, "--seeds", "0", "--trained-policy", "", "--train-seconds", "0", *TINY]
    assert evaluate.main([*argv, "--out", str(out)]) == 0
    written, summary = (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())
    assert all(part in written for part in SUITE_REPORTS[suite])
    for name in ("report.md", "summary.json"):  # as after an aggregation that failed
        (out / name).unlink()
    assert evaluate.main(["--out", str(out), "--report-only", "--bootstrap-reps", "100"]) == 0
    rebuilt, again = (out / "report.md").read_text(), json.loads((out / "summary.json").read_text())
    assert again["improvements"] == summary["improvements"] and len(again["improvements"]) == BASELINES[suite]
    assert again["notes"] == summary["notes"]
    title, *rest = rebuilt.splitlines()
    assert title == written.splitlines()[0] + " (report rebuilt from episodes.csv)" and again["title"] == title[2:]
    assert [x for x in rest if not x.startswith("- Date:")] == [
        x for x in written.splitlines()[1:] if not x.startswith("- Date:")
    ]


def test_report_only_of_a_run_from_before_its_report_inputs_were_saved(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path)
    run = json.loads((out / "run_facts.json").read_text())
    assert run.pop("report") == {"title": "Policy comparison", "baselines": ["no_control", "heuristic"], "notes": [],
                                 "section": ""}  # fmt: skip
    (out / "run_facts.json").write_text(json.dumps(run))
    assert evaluate.main(["--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").read_text().startswith("# Policy comparison (report rebuilt from episodes.csv)\n")
    assert json.loads((out / "summary.json").read_text())["improvements"] == {"no_control": {}}  # the default baselines
    # the baseline alone is compared with nothing: no empty improvement table, in the report or on the console
    assert "Improvement over" not in (out / "report.md").read_text() + capsys.readouterr().out


def test_the_report_says_how_many_episodes_ran(finished_run, tmp_path):
    """A run stopped short (--max-wall-s, or a crash) reports the episodes that ran, beside those asked for."""
    out = copy_run(finished_run, tmp_path)
    lines = (out / "episodes.csv").read_bytes().split(b"\r\n")
    (out / "episodes.csv").write_bytes(b"\r\n".join(lines[:2] + [b""]))  # seed 1's episode did not run
    assert evaluate.main(["--out", str(out), "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert "- Episodes: 1 per policy ran (seeds [0]) of the 2 asked (seeds [0, 1], 1 each), paired" in report
    assert "> 1 of 2 episodes ran (time budget reached)" in report and "`--resume` runs more" in report
    assert json.loads((out / "summary.json").read_text())["episodes_run"] == {"no_control": 1}


def test_without_a_trained_policy_the_hint_gives_the_warm_start_command(capsys):
    import evaluate_suites

    args = evaluate.parse_args(["--trained-policy", "", "--report-only"])
    assert evaluate_suites.committed_policy(args) == []
    hint = capsys.readouterr().out
    assert "imitate:kcm_greedy" in hint and "--trained-policy runs/ppo_kcm_s0/best/best_model.zip" in hint
    assert "results/" not in hint  # trains into runs/, not over a committed folder
