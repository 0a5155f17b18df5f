"""The suites of `evaluate.py`: the main job, the original system's comparisons (routers, TTT allocation, the
single-GPU test) and the GPU suites, each a function `(args, out) -> summary`; and `--report-only`.

Run them through `python evaluate.py --suite NAME` (see its docstring); this module holds no entry point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import evaluate_sections as sections
from evaluate import (
    BASELINES,
    GPU_FULL_PARTS,
    Args,
    PolicySpec,
    UsageError,
    aggregate,
    check_policies,
    controller_names,
    env_kwargs,
    evaluate,
    parse_policies,
    parse_seeds,
    read_rows,
    write_json,
)
from evaluate_facts import config_facts, device_facts
from evaluate_rows import atomic_open

REPO = Path(__file__).resolve().parent  # the scripts, tests and committed files the suites run, from any folder


def repo_path(path: str) -> str:
    """`path` as given where it exists; else, when relative, the repository's file of that name (so the suites
    find the committed policy and the scripts they run from any working folder)."""
    return path if Path(path).exists() or Path(path).is_absolute() or not (REPO / path).exists() else str(REPO / path)


# README "Trained policy": how the committed policy (results/ppo_kcm_warm/best_model.zip) was trained, into runs/
WARM_START_COMMAND = ("python train_agent.py --algo ppo --timesteps 100000 --n-envs 2 --vec subproc --seed 0 "
                      "--out runs/ppo_kcm_s0 --eval-freq 4000 --eval-episodes 4 --checkpoint-freq 8000 "
                      "--hyperparams imitate:kcm_greedy imitate_steps:2048 learning_rate:1e-4 \"policy_kwargs:"
                      "{net_arch: {pi: [64, 64], vf: [64, 64]}, activation_fn: tanh, log_std_init: -1.6}\"")


def committed_policy(args: Args, label: str = "") -> list[PolicySpec]:
    """The committed trained policy as a spec (labelled `label`, or `<algo>_committed`), or [] with a printed note
    when it is absent (with the command that trained it, for this preset). Its algorithm is the saved model's, so a
    SAC, TD3 or A2C run's model serves as well as PPO's."""
    path = repo_path(args.trained_policy) if args.trained_policy else ""
    if not path or not Path(path).exists():
        preset = f" --env-kwargs preset:{args.preset}" if args.preset != "default" else ""
        print(f"note: no trained policy at {args.trained_policy!r}; evaluating without it (train one, warm-started "
              f"from kcm_greedy as in README's \"Trained policy\": {WARM_START_COMMAND}{preset}; then pass "
              "--trained-policy runs/ppo_kcm_s0/best/best_model.zip)")
        return []
    from agents.sb3 import infer_algo

    try:
        algo = infer_algo(Path(path) / "model.zip" if Path(path).is_dir() else path)  # a run folder: its config.yaml
    except ValueError:  # not a saved model: loading it as ppo says so, with the spec, where the policies are checked
        algo = "ppo"
    # The spec says the path as given: a resume from another folder must not see another policy.
    return [PolicySpec(label or f"{algo}_committed", f"{algo}:{args.trained_policy}", algo=algo, path=path)]


def train_short_run(args: Args, folder: Path) -> list[PolicySpec]:
    """Train PPO with train_agent.py (a subprocess) for at most `args.train_seconds` of wall time (then SIGTERM, on
    which it saves a checkpoint) or `args.train_timesteps` steps; TensorBoard logs, checkpoints and config land in
    `folder`. Returns it as a spec labelled as a short run, or [] with a note when nothing was trained."""
    if args.train_seconds <= 0:
        return []
    if not (args.resume and _trained_steps(folder)):
        if not (REPO / "train_agent.py").exists():
            print(f"note: {REPO / 'train_agent.py'} not found; skipping the short training run")
            return []
        cmd = [sys.executable, str(REPO / "train_agent.py"), "--algo", "ppo",
               "--timesteps", str(args.train_timesteps),
               "--n-envs", str(args.train_n_envs), "--seed", "0", "--out", str(folder),
               "--telemetry", "nvml" if args.telemetry == "nvml" else "simulated", "--no-progress-bar",
               "--env-kwargs", f"preset:{args.preset}", f"episode_intervals:{args.episode_intervals}"]
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        print(f"training PPO for at most {args.train_seconds} s (log: {folder / 'train.log'}): {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        with (folder / "train.log").open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=args.train_seconds)
            except subprocess.TimeoutExpired:
                proc.terminate()  # train_agent.py saves a checkpoint on SIGTERM and exits 130
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.returncode not in (0, 130) or not _trained_steps(folder):
            tail = "\n".join((folder / "train.log").read_text().splitlines()[-5:])
            print(f"note: the short training run left no model (exit {proc.returncode}); end of its log:\n{tail}")
            return []
        print(f"trained {_trained_steps(folder)} steps in {time.perf_counter() - t0:.0f} s; in {folder}")
    steps = _trained_steps(folder)
    return [PolicySpec(f"ppo_short_run_{steps}_steps", f"ppo:{folder}", algo="ppo", path=str(folder))]


def _trained_steps(folder: Path) -> int:
    """Steps of the newest model a train_agent.py run folder holds (its final model, else its latest checkpoint)."""
    summary = folder / "train_summary.json"
    if (folder / "model.zip").exists() and summary.exists():
        return int(json.loads(summary.read_text()).get("steps", 0)) or 1
    steps = [int(m.group(1)) for p in folder.glob("checkpoints/ckpt_*_steps.zip")
             if (m := re.match(r"ckpt_(\d+)_steps\.zip$", p.name))]
    return max(steps, default=0)


def suite_main(args: Args, out: Path) -> dict:
    """The README's main job: the committed policy vs the heuristic, its teacher kcm_greedy and no control on
    held-out seeds, plus a short PPO run evaluated beside them (and any --policies); within `--main-budget-s` (15
    minutes on 2 cores)."""
    t0 = time.perf_counter()
    specs = committed_policy(args)
    notes = [] if specs else [f"No committed trained policy at `{args.trained_policy}`: evaluated without it."]
    # kcm_greedy is the committed policy's teacher (its warm start): whether RL added anything shows against it.
    specs += [PolicySpec("heuristic", "heuristic", name="heuristic"),
              PolicySpec("kcm_greedy", "kcm_greedy", name="kcm_greedy"),
              PolicySpec("no_control", "no_control", name="no_control")]
    specs += parse_policies(args.policies, controller_names()) if args.policies else []
    if args.train_seconds > 0:  # a spec that cannot run here fails now, not after minutes of training
        check_policies(specs, {"main": env_kwargs(args)}, args.policy_device, args.progress)
    short = train_short_run(args, out / "ppo_short")
    if short:
        notes.append(f"`{short[0].label}` is a short training run ({args.train_seconds} s of PPO on this machine; "
                     f"model, checkpoints and TensorBoard logs in `ppo_short/`): it shows that training runs, not "
                     "what a trained policy achieves.")
    left = max(60, int(args.main_budget_s - (time.perf_counter() - t0)))
    args = dataclasses.replace(args, max_wall_s=args.max_wall_s or left)
    return evaluate(args, specs + short, {"main": env_kwargs(args)}, out, "Main comparison (held-out seeds)",
                    baselines=MAIN_BASELINES, notes=tuple(notes))


MAIN_BASELINES = ("no_control", "heuristic", "kcm_greedy")
ROUTER_BASELINES = ("baseline", "EnergyAwareTTTRouter")  # the router tables' improvements are over the first
TTT_BASELINES = ("fixed_1x", "no_ttt")  # the TTT compute axis is relative to the first


def suite_routers(args: Args, out: Path) -> dict:
    """The original router comparison: baseline, kernel-aware, statistical load balancing, the
    EnergyAwareTTTRouter, and the trained agents (committed, plus any --policies)."""
    specs = [PolicySpec("baseline", "no_control", name="no_control"),
             PolicySpec("kernel_aware", "kcm_greedy", name="kcm_greedy"),
             PolicySpec("statistical_lb", "load_balance", name="load_balance"),
             PolicySpec("EnergyAwareTTTRouter", "heuristic", name="heuristic")]
    specs += committed_policy(args)
    specs += parse_policies(args.policies, controller_names()) if args.policies else []
    summary = evaluate(args, specs, {"main": env_kwargs(args)}, out, "Router comparison",
                       baselines=ROUTER_BASELINES, section="router-tables")
    router_section(args, out, summary)
    return summary


def router_section(args: Args, out: Path, summary: dict) -> None:
    """The router README's tables: router_comparison.md and the end of report.md."""
    text = sections.router_tables(summary, ROUTER_BASELINES[0])
    with atomic_open(out / "router_comparison.md") as f:
        f.write(text)
    sections.append_section(out, text)
    print("\n" + text)


def suite_ttt_allocation(args: Args, out: Path) -> dict:
    """Fixed TTT schedules at 1x, 2x and 4x the default compute against adaptive ones (heuristic, learned), as a
    compute-vs-loss Pareto curve. Compute is TTT tokens trained per served token, relative to fixed 1x."""
    from moe_runtime import DEFAULT_CHUNK_TOKENS, DEFAULT_FREQUENCY_TOKENS

    specs = [PolicySpec("no_ttt", "no_control", name="no_control")]
    for mult in (1, 2, 4):
        kw = {"frequency_tokens": DEFAULT_FREQUENCY_TOKENS // mult, "chunk_tokens": DEFAULT_CHUNK_TOKENS}
        specs.append(PolicySpec(f"fixed_{mult}x", f"fixed_ttt(frequency_tokens={kw['frequency_tokens']},"
                                f"chunk_tokens={kw['chunk_tokens']})", name="fixed_ttt", kwargs=kw))
    specs.append(PolicySpec("adaptive_heuristic", "heuristic", name="heuristic"))
    specs += committed_policy(args, "adaptive_learned")
    specs += parse_policies(args.policies, controller_names()) if args.policies else []
    summary = evaluate(args, specs, {"main": env_kwargs(args)}, out, "TTT allocation: fixed vs adaptive",
                       baselines=TTT_BASELINES, section="ttt-allocation")
    ttt_section(args, out, summary)
    return summary


def ttt_section(args: Args, out: Path, summary: dict) -> None:
    """The compute-vs-loss curve: ttt_allocation.csv, ttt_allocation.png and the end of report.md."""
    rows = read_rows(out / "episodes.csv")
    sections.ttt_allocation(out, summary, rows, TTT_BASELINES[0], args.bootstrap_reps, args.confidence)


def dense_twin(args: Args, moe_kwargs: dict) -> dict:
    """Env kwargs of a dense transformer at the MoE's active FLOPs per token: one expert (top-1) of width
    top_k x the mean expert width, in the runtime and at deployment scale; pretrained and cached like the MoE."""
    import envs
    from moe_runtime import MoEConfig

    moe = MoEConfig.preset(args.preset)
    width = int(round(moe.top_k * float(np.mean(moe.expert_widths))))
    dense = dataclasses.replace(moe, num_experts=1, top_k=1, expert_widths=(width,),
                                preset_name=f"{moe.preset_name}-dense")
    deploy = envs.deployment_for(moe)
    deploy_width = int(round(moe.top_k * float(np.mean(deploy.expert_widths)) / 64) * 64)
    deploy = dataclasses.replace(deploy, expert_widths=(deploy_width,))
    return {**moe_kwargs, "model": dense, "deployment": deploy}


KCM_RESULTS = "kernel_cost_model_test_results.json"  # what `python -m kernels.cost_model` writes (single-gpu)


def suite_single_gpu(args: Args, out: Path) -> dict:
    """The original single-GPU test on one token stream: dense (no TTT), dense + small-batch TTT, MoE +
    EnergyAwareTTTRouter; writes comparison_results.csv, comparison_plot.png, hpc_results.json,
    kernel_cost_model_test_results.json and hpc_summary.json beside the usual report."""
    moe_kwargs = env_kwargs(args)
    specs = [PolicySpec("Simple Transformer", "no_control", name="no_control", env="dense"),
             PolicySpec("Simple Transformer + TTT", "fixed_ttt(frequency_tokens=256,chunk_tokens=128)",
                        name="fixed_ttt", kwargs={"frequency_tokens": 256, "chunk_tokens": 128}, env="dense"),
             PolicySpec("MoE + EnergyAwareTTTRouter", "heuristic", name="heuristic", env="moe")]
    configs = {"dense": dense_twin(args, moe_kwargs), "moe": moe_kwargs}
    summary = evaluate(args, specs, configs, out, "Single-GPU comparison", baselines=("Simple Transformer",),
                       notes=("Small-batch TTT: every 256 tokens on 128-token chunks (the action's most frequent "
                              "schedule); the original updated every 16-64 tokens.",), section="single-gpu")
    (out / KCM_RESULTS).unlink(missing_ok=True)  # an earlier run's must not pass for this one's
    with (out / "kcm.log").open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "kernels.cost_model", "--gpu-type", args.gpu, "--out",
                               str(out / KCM_RESULTS)], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        print(f"note: python -m kernels.cost_model failed (exit {proc.returncode}); see {out / 'kcm.log'}")
    single_gpu_section(args, out, summary)
    return summary


def single_gpu_section(args: Args, out: Path, summary: dict) -> None:
    """The original test's files (`evaluate_sections.single_gpu_outputs`) and the end of report.md; the cost model's
    results count as available when `python -m kernels.cost_model` left its file."""
    sections.single_gpu_outputs(out, summary, read_rows(out / "episodes.csv"), vars(args),
                              kcm_ok=(out / KCM_RESULTS).exists())


# {section: the function that appends it to report.md} as `evaluate(section=...)` names it in run_facts.json
SECTIONS = {"router-tables": router_section, "ttt-allocation": ttt_section, "single-gpu": single_gpu_section}


def require_cuda(suite: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--suite {suite} needs an NVIDIA GPU with CUDA; torch.cuda.is_available() is False here. "
                         "Run it on a GPU machine, or use --suite main / routers / ttt-allocation / single-gpu, "
                         "which run on the CPU with the simulated GPU")


def run_part(name: str, cmd: list[str], out: Path, timeout_s: int) -> dict:
    """A subprocess part of a GPU suite, logged to out/logs/<name>.log, with its status and wall time."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = out / "logs" / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the compiled kernels, not the interpreter
    t0 = time.perf_counter()
    print(f"[{name}] {' '.join(cmd)}")
    try:
        with log.open("w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s, env=env).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    result = {"command": " ".join(cmd), "status": "ok" if rc == 0 else f"failed ({rc})",
              "wall_s": round(time.perf_counter() - t0, 1), "log": str(log)}
    print(f"[{name}] {result['status']} in {result['wall_s']} s; tail of {log}:\n  "
          + "\n  ".join(log.read_text().splitlines()[-4:]))
    return result


def gpu_comparison(args: Args, out: Path, extra: tuple[str, ...] = ()) -> dict:
    args = dataclasses.replace(args, preset="gpu", telemetry="nvml", pretrain_steps=args.gpu_pretrain_steps)
    specs = [PolicySpec("no_control", "no_control", name="no_control"),
             PolicySpec("heuristic", "heuristic", name="heuristic")]
    specs += [PolicySpec(n, n, name=n) for n in extra] + committed_policy(args)
    return evaluate(args, specs, {"main": env_kwargs(args)}, out, "Measured comparison on the GPU")


def suite_gpu(args: Args, out: Path) -> dict:
    """One call, < 10 minutes on one H100 from bare: the compiled kernels' correctness tests and a short benchmark,
    the telemetry's cost, KCM validation on a subset of shapes (each a subprocess, logged, that cannot stop the
    rest), then brief gpu-preset pretraining (cached in the run folder) and a short measured comparison (3 seeds x
    30 s episodes: long enough for the 10-20 s thermal response). A part that fails is recorded in
    gpu_summary.json with its error, and the suite goes on."""
    import traceback

    import torch

    from moe_runtime import MoEConfig, PretrainConfig, load_or_pretrain

    require_cuda("gpu")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MOE_RL_CACHE"] = str((out / "cache").resolve())  # checkpoint and calibration live in the run folder
    parts, t0, py = {}, time.perf_counter(), sys.executable
    summary = {"device": device_facts(), "parts": parts}

    def save() -> None:
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(out / "gpu_summary.json", summary)

    parts["kernel_tests"] = run_part("kernel_tests", [py, "-m", "pytest", "-q", "-m", "gpu",
                                                      str(REPO / "tests" / "kernels")], out, 200)
    parts["kernel_bench"] = run_part("kernel_bench", [py, str(REPO / "benchmarks" / "moe_kernels.py"),
                                     "--experts", "8", "16",
                                     "--top-k", "2", "--tokens", "2048", "16384", "--d-model", "1024",
                                     "--out", str(out / "moe_kernels.json")], out, 120)
    parts["telemetry_overhead"] = run_part("telemetry_overhead",
                                           [py, str(REPO / "benchmarks" / "telemetry_overhead.py"),
                                           "--source", "nvml", "--repeats", "500", "--out",
                                           str(out / "telemetry_overhead.json")], out, 60)
    table = str(REPO / "kernels" / "data" / "h100_cost_table.json")
    if "H100" not in torch.cuda.get_device_name(0):  # another GPU: a quick table of its own first
        table = str(out / "cost_table.json")
        parts["kcm_profile"] = run_part("kcm_profile", [py, "-m", "kernels.profile", "--quick", "--out", table],
                                        out, 150)
    parts["kcm_validate"] = run_part("kcm_validate", [py, "-m", "kernels.profile", "--validate", table, "--quick"],
                                     out, 120)
    save()
    comparison = {}
    try:
        t1 = time.perf_counter()
        load_or_pretrain(MoEConfig.preset("gpu"), PretrainConfig(steps=args.gpu_pretrain_steps))
        parts["pretrain"] = {"status": "ok", "steps": args.gpu_pretrain_steps,
                             "wall_s": round(time.perf_counter() - t1, 1)}
        budget = max(60, int(530 - (time.perf_counter() - t0)))  # what is left of the 10 minutes, s
        t1 = time.perf_counter()
        comparison = gpu_comparison(dataclasses.replace(args, max_wall_s=args.max_wall_s or budget), out)
        parts["comparison"] = {"status": "ok", "report": "report.md", "wall_s": round(time.perf_counter() - t1, 1)}
    except (UsageError, KeyboardInterrupt):
        raise
    except Exception as exc:  # recorded with its traceback: the parts before it still count
        stage = "comparison" if "pretrain" in parts else "pretrain"
        parts[stage] = {"status": f"failed ({type(exc).__name__}: {exc})"[:500],
                        "traceback": traceback.format_exc()[-4000:]}
        print(f"[{stage}] failed:\n{traceback.format_exc()}", file=sys.stderr)
    save()
    return comparison


def suite_gpu_full(args: Args, out: Path) -> dict:
    """The longer GPU work in parts of at most 10 minutes each: `bench` (the whole kernel benchmark grid),
    `calibrate` (KCM profiling on this GPU and its validation), `compare` (5 seeds x 60 s, five policies; resumable:
    run it again with --resume until done)."""
    require_cuda("gpu-full")
    if args.part not in GPU_FULL_PARTS:
        raise UsageError(f"--suite gpu-full needs --part, one of {', '.join(GPU_FULL_PARTS)} (each fits 10 minutes)")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MOE_RL_CACHE"] = str((out / "cache").resolve())
    py, parts = sys.executable, {}
    if args.part == "bench":
        parts["bench"] = run_part("bench", [py, str(REPO / "benchmarks" / "moe_kernels.py"), "--out",
                                          str(out / "moe_kernels.json")],
                                  out, 590)
    elif args.part == "calibrate":
        table = str(out / "cost_table.json")
        parts["profile"] = run_part("profile", [py, "-m", "kernels.profile", "--out", table], out, 420)
        parts["validate"] = run_part("validate", [py, "-m", "kernels.profile", "--validate", table], out, 170)
    else:
        gpu_comparison(dataclasses.replace(args, max_wall_s=args.max_wall_s or 540), out,
                       extra=("load_balance", "kcm_greedy"))
    summary = {"device": device_facts(), "part": args.part, "parts": parts}
    write_json(out / f"gpu_full_{args.part}.json", summary)
    return summary


def read_json(path: Path) -> dict:
    """A JSON file a run wrote; a UsageError naming it when it cannot be read back."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--report-only: cannot read {path} ({exc}); rerun the suite into a new --out") from exc


def report_only(args: Args, out: Path) -> dict:
    """Rebuild summary.json, report.md and the plots of a finished (or interrupted) run from its episodes.csv and
    traces, with the run's own args.json, device facts and report inputs (title, baselines, notes and the suite's
    section, from run_facts.json): for a run whose aggregation failed, or another statistic (--bootstrap-reps,
    --confidence). Runs from before run_facts.json saved its report inputs get a generic title, the default
    baselines, no suite notes and no suite section."""
    import envs

    if not (out / "episodes.csv").exists():
        raise UsageError(f"--report-only: {out / 'episodes.csv'} does not exist; give the --out of a run")
    rows = read_rows(out / "episodes.csv")
    if not rows:
        raise UsageError(f"--report-only: {out / 'episodes.csv'} has no finished episode")
    saved = read_json(out / "args.json") if (out / "args.json").exists() else {}
    keep = {"bootstrap_reps", "confidence", "out"}
    run_args = dataclasses.replace(args, **{k: v for k, v in saved.items()
                                            if k in Args.__dataclass_fields__ and k not in keep | {"report_only"}})
    suite = saved.get("suite_run", "compare")
    if suite in ("gpu", "gpu-full"):  # as gpu_comparison ran it
        run_args = dataclasses.replace(run_args, preset="gpu", telemetry="nvml",
                                       pretrain_steps=run_args.gpu_pretrain_steps)
    if saved:  # the episodes the run asked for, as its report took them: a resumed folder may hold other seeds too
        wanted = {1000 * s + e for s in parse_seeds(run_args.seeds) for e in range(run_args.episodes)}
        rows = [r for r in rows if r["episode_seed"] in wanted]
        if not rows:
            raise UsageError(f"--report-only: {out / 'episodes.csv'} has no finished episode of the seeds "
                             f"{run_args.seeds!r} that {out / 'args.json'} asks for")
    specs, seen = [], set()
    for r in rows:
        if r["label"] not in seen:
            seen.add(r["label"])
            specs.append(PolicySpec(r["label"], r["spec"], env=r["env"]))
    run = read_json(out / "run_facts.json") if (out / "run_facts.json").exists() else {}
    if run:
        device, facts = run["device"], run["envs"]
    else:  # runs from before run_facts.json: the GPU suite's device facts, the env facts from its config
        gpu_summary = out / "gpu_summary.json"
        device = read_json(gpu_summary)["device"] if gpu_summary.exists() else {}
        device = {"date": "", "host": "", "cpu": "", "python": "", "torch": "", **device}
        cfg = envs.EnvConfig.from_kwargs(**env_kwargs(run_args))
        facts = {r["env"]: config_facts(cfg, r["hardware_source"], run_args.gpu, None) for r in rows}
    titles = {"gpu": "Measured comparison on the GPU", "gpu-full": "Measured comparison on the GPU"}
    inputs = run.get("report") or {"title": titles.get(suite, "Policy comparison"), "baselines": BASELINES,
                                   "notes": [], "section": ""}  # runs from before run_facts.json kept them
    if inputs["section"] and inputs["section"] not in SECTIONS:
        raise UsageError(f"--report-only: {out / 'run_facts.json'} names an unknown report section "
                         f"{inputs['section']!r} (known: {', '.join(SECTIONS)}); rerun the suite into a new --out")
    title = inputs["title"] + " (report rebuilt from episodes.csv)"
    notes = tuple(inputs["notes"]) + tuple(run.get("policy_notes", {}).values())
    summary = aggregate(run_args, specs, rows, facts, device, out, title, tuple(inputs["baselines"]), notes)
    if inputs["section"]:
        SECTIONS[inputs["section"]](run_args, out, summary)
    return summary


SUITE_FUNCTIONS = {"main": suite_main, "routers": suite_routers, "ttt-allocation": suite_ttt_allocation,
                   "single-gpu": suite_single_gpu, "gpu": suite_gpu, "gpu-full": suite_gpu_full}
