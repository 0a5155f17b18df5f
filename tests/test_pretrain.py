"""Pretraining and checkpoints of the MoE runtime on the CPU with the tiny preset: losses fall, checkpoints round-trip
and name what they hold, a bad or corrupt one is a clear error, processes on a cold cache pretrain once, and the
pretraining and demo command lines."""

from pathlib import Path

import pytest
import torch

import moe_runtime as mr


@pytest.fixture(scope="module")
def tiny():
    return mr.MoEConfig.preset("tiny")


def test_pretraining_lowers_loss_and_checkpoint_round_trips(tiny, tmp_path):
    pcfg = mr.PretrainConfig(steps=40, warmup_steps=5, lr=1e-2, eval_tokens=2048, cache_dir=str(tmp_path), progress=False)
    torch.manual_seed(tiny.seed)
    before = mr.evaluate_loss(mr.MoETransformer(tiny), "prose", tokens=2048)
    result = mr.pretrain(tiny, pcfg)
    assert result["val_loss_prose"] < before - 0.5
    model = mr.load_model(result["path"], tiny)
    again = mr.load_model(result["path"], tiny)
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n
    assert mr.evaluate_loss(model, "prose", tokens=2048) == pytest.approx(result["val_loss_prose"], rel=1e-6)
    # Which weights these are, for reports: a digest of them and the pretraining losses that came with them.
    from moe_runtime.checkpoint import weights_digest

    p = model.provenance
    assert p["weights_sha256"] == again.provenance["weights_sha256"] == weights_digest(model.state_dict())
    assert p["steps"] == 40 and p["val_loss_prose"] == result["val_loss_prose"] and p["checkpoint"] in result["path"]
    state = model.state_dict()
    state["lm_head.weight" if "lm_head.weight" in state else next(iter(state))].view(-1)[0] += 1e-3
    assert weights_digest(state) != p["weights_sha256"]


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tiny, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(mr.CheckpointError, match="bad.pt") as err:
        mr.load_model(bad, tiny)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200, "one line, not torch's paragraphs"
    with pytest.raises(mr.CheckpointError, match="does not exist"):
        mr.load_model(tmp_path / "missing.pt", tiny)
    good = tmp_path / "good.pt"
    mr.save_checkpoint(good, mr.MoETransformer(tiny), corpus_sha="x")
    other = mr.MoEConfig.preset("tiny", d_model=64)
    with pytest.raises(mr.CheckpointError, match="different model"):
        mr.load_model(good, other)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(mr.CheckpointError, match="trunc.pt"):
        mr.load_model(truncated, tiny)
    # files torch loads whose contents are damaged: each a CheckpointError naming the file, not a KeyError
    saved = torch.load(good, weights_only=True)
    damage = {"no_config": {k: v for k, v in saved.items() if k != "config"}, "config_a_list": {**saved, "config": [1]},
              "weights_a_number": {**saved, "model": 5}, "bad_config_value": {**saved, "config": {"top_k": 0}},
              "non_tensor_weights": {**saved, "model": dict.fromkeys(saved["model"], 1)}}  # fmt: skip
    for name, ckpt in damage.items():
        torch.save(ckpt, tmp_path / f"{name}.pt")
        with pytest.raises(mr.CheckpointError, match=f"{name}.pt"):
            mr.load_model(tmp_path / f"{name}.pt", None if name == "bad_config_value" else tiny)


PRETRAIN_BAD_FLAGS = [
    (["--preset", "nope"], "unknown MoEConfig preset 'nope'"),
    (["--steps", "0"], "PretrainConfig.steps must be an integer >= 1, got 0"),
    (["--checkpoint-every", "0"], "PretrainConfig.checkpoint_every must be an integer >= 1"),  # was ZeroDivisionError
    (["--threads", "-1"], "PretrainConfig.threads must be an integer >= 0"),
    (["--lr", "nan"], "PretrainConfig.lr must be a positive, finite rate, got nan"),
    (["--weight-decay", "-1"], "PretrainConfig.weight_decay must be a finite number >= 0"),
    (["--corpus", "/no/such/corpus.txt"], "corpus '/no/such/corpus.txt' is neither"),
]


@pytest.mark.parametrize(("argv", "message"), PRETRAIN_BAD_FLAGS)
def test_pretrain_cli_bad_values_are_one_line_errors(argv, message, capsys):
    from moe_runtime.pretrain import main as pretrain_main

    with pytest.raises(SystemExit) as stop:
        pretrain_main(["--preset", "tiny", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_corrupt_cached_model_says_how_to_rebuild_it(tiny, tmp_path, monkeypatch, capsys):
    from moe_runtime.pretrain import main as pretrain_main

    pcfg = mr.PretrainConfig(steps=5, cache_dir=str(tmp_path))
    path = mr.checkpoint_path(tiny, pcfg)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(mr.CheckpointError, match=r"corrupt .*; delete it, and the next run pretrains the model again"):
        mr.load_or_pretrain(tiny, pcfg)
    with pytest.raises(SystemExit) as stop:  # was torch.load's traceback
        pretrain_main(["--preset", "tiny", "--steps", "5", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and str(path) in err and "--force retrains" in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        pretrain_main(["--preset", "tiny", "--cache-dir", str(tmp_path / "file")])
    assert f"--cache-dir '{tmp_path / 'file'}' is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--intervals", "0"], "--intervals must be an integer >= 1, got 0"),
        (["--interval-tokens", "-5"], "--interval-tokens must be an integer >= 1, got -5"),  # was a traceback
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),  # after the model had loaded
        (["--shift-tokens", "-1"], "--shift-tokens and --seed must be integers >= 0"),
        (["--preset", "nope"], "unknown MoEConfig preset 'nope'"),
    ],
)
def test_demo_cli_bad_values_are_one_line_errors(argv, message, capsys):
    from moe_runtime.demo import main as demo_main

    with pytest.raises(SystemExit) as stop:
        demo_main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_pretrain_entry_point_runs_without_runpys_warning(tmp_path):
    """`python -m moe_runtime` (README) pretrains; `python -m moe_runtime.pretrain` made runpy warn that the package
    had imported the module before running it."""
    import subprocess
    import sys

    argv = [sys.executable, "-W", "error::RuntimeWarning", "-m", "moe_runtime", "--preset", "tiny", "--steps", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode == 2 and "PretrainConfig.steps must be an integer >= 1" in done.stderr, done.stderr
    assert "RuntimeWarning" not in done.stderr and "usage: python -m moe_runtime" in done.stderr


def test_pretrain_cli_no_progress_reaches_the_config(tmp_path, monkeypatch):
    import importlib

    pretrain_module = importlib.import_module("moe_runtime.pretrain")  # the package's `pretrain` is the function

    seen = {}

    def fake_pretrain(cfg, pcfg):
        seen["progress"] = pcfg.progress
        return {}

    monkeypatch.setattr(pretrain_module, "pretrain", fake_pretrain)
    for argv, progress in ((["--no-progress"], False), ([], True)):
        seen.clear()
        pretrain_module.main(["--preset", "tiny", "--steps", "1", "--cache-dir", str(tmp_path), *argv])
        assert seen == {"progress": progress}


def _ensure_pretrained_in_child(cache_dir: str, calls: str, barrier) -> None:
    """One of two processes asking for the same uncached model at once (a vector env's workers on a cold cache).
    Pretraining is faked (it logs its call, takes a second, saves a placeholder) to keep the test short."""
    import importlib
    import time

    pretrain_module = importlib.import_module("moe_runtime.pretrain")

    def fake_pretrain(cfg, pcfg):
        with open(calls, "a") as f:
            f.write("pretrain\n")
        time.sleep(1.0)  # the window in which the other process would start a second pretraining
        pretrain_module.checkpoint_path(cfg, pcfg).write_bytes(b"placeholder")

    pretrain_module.pretrain = fake_pretrain
    pcfg = pretrain_module.PretrainConfig(steps=3, cache_dir=cache_dir, progress=False)
    barrier.wait(timeout=60)
    pretrain_module.ensure_pretrained(mr.MoEConfig.preset("tiny"), pcfg)


def test_processes_asking_at_once_pretrain_a_model_once(tmp_path):
    pytest.importorskip("fcntl", reason="the cache lock is POSIX flock; elsewhere concurrent pretraining repeats")
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, calls = ctx.Barrier(2), tmp_path / "calls.txt"
    procs = [ctx.Process(target=_ensure_pretrained_in_child, args=(str(tmp_path), str(calls), barrier))
             for _ in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert calls.read_text().splitlines() == ["pretrain"], "the second process waited, then found it cached"
    pcfg = mr.PretrainConfig(steps=3, cache_dir=str(tmp_path))
    assert mr.ensure_pretrained(mr.MoEConfig.preset("tiny"), pcfg).read_bytes() == b"placeholder"


def test_pretrain_and_demo_help_say_what_each_flag_is(capsys):
    from moe_runtime.demo import main as demo_main
    from moe_runtime.pretrain import main as pretrain_main

    for main in (pretrain_main, demo_main):
        with pytest.raises(SystemExit):
            main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("optimiser steps", "peak learning rate", "(default: 900)", "python -m moe_runtime.demo",
                 "prose tokens served before the stream shifts to code"):  # fmt: skip
        assert text in out


def test_a_config_from_a_newer_version_names_the_fields_it_leaves_out(caplog):
    saved = {**mr.MoEConfig.preset("tiny").to_dict(), "rope_theta": 1e4}
    with caplog.at_level("WARNING", logger="moe_runtime.config"):
        assert mr.MoEConfig.from_dict(saved) == mr.MoEConfig.preset("tiny")
    assert "['rope_theta'] are not known to this version; ignored" in caplog.text
