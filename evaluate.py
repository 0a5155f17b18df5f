"""Compare routing policies on `MoERouting-v0` with paired seeds and robust statistics, and publish the comparison.

    python evaluate.py --policies heuristic,no_control,load_balance,ppo:results/ppo_default --seeds 0-9 \\
        --episodes 1 --telemetry auto --out results/compare
    python evaluate.py --policies "warm=ppo:runs/ppo_kcm_s*/best/best_model.zip,kcm_greedy,no_control" \\
        --baselines no_control,kcm_greedy       # several training runs of one method, pooled
    python evaluate.py                          # the main job (= --suite main): trained policy vs heuristic vs none
    python evaluate.py --suite routers          # the original router comparison table
    python evaluate.py --suite ttt-allocation   # fixed TTT schedules (1x/2x/4x) vs adaptive: compute vs loss
    python evaluate.py --suite single-gpu       # dense, dense + small-batch TTT, MoE + EnergyAwareTTTRouter
    python evaluate.py --suite gpu              # on one GPU, < 10 min: pretrain, kernels, KCM check, measured run
    python evaluate.py --suite gpu-full --part bench|calibrate|compare
    python evaluate.py --out results/NAME --report-only   # rebuild a run's report from its episodes.csv

Policy specs (comma-separated in --policies):
    NAME                     a controller of `agents.make_controller`: heuristic, no_control, load_balance,
                             fixed_ttt, kcm_greedy, random
    NAME(KEY=VALUE,...)      the same with the controller's arguments, e.g. fixed_ttt(frequency_tokens=1024)
    MODULE:NAME(KEY=VALUE,...)  your own controller: NAME(spec, **kwargs) from an importable module (Gymnasium's
                             entry-point form), e.g. examples.custom_controller:Thermostat(max_bias=0.5)
    ppo:PATH  sb3:PATH       a saved stable-baselines3 model (.zip, or a train_agent.py run folder); sb3 infers the
                             algorithm (a2c:, sac:, td3: also work, and must name the saved model's)
    LABEL=SPEC               any of these under another name, e.g. lb2=load_balance(step=0.02)
    LABEL=ppo:GLOB           several training runs of one method, e.g. warm=ppo:runs/ppo_kcm_s*/best/best_model.zip:
                             each runs as LABEL@RUN (RUN: its run folder; no LABEL: the path's first part with a
                             wildcard), and the report pools them ("Across training runs": an interval over runs
                             and episodes, not over episodes alone). '@' is kept for these labels.

Every policy runs the same episode seeds (episode seed = 1000 * seed + episode): the same token streams, shift
points, workloads and initial temperatures, so differences are paired. Rows go to episodes.csv as episodes finish
(a crash loses at most the running one; `--resume` skips finished rows). Outputs in --out: episodes.csv,
traces/*.json (one per episode), summary.json, report.md, PNG plots, args.json, run_facts.json (the device and
env facts and the report's title, baselines, notes and suite section: `--report-only` rebuilds the same report from
them). Every figure says its source: `measured`, `simulated` (the simulated GPU at deployment scale) or `predicted`
(the kernel cost model).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

import evaluate_args
import evaluate_plots as plots
import evaluate_report as report
import evaluate_stats as stats
from evaluate_args import (  # noqa: F401  (part of evaluate's surface)
    GPU_FULL_PARTS,
    REPO,
    SUITE_DEFAULTS,
    SUITES,
    SUITES_WITHOUT_POLICIES,
    ZERO_MEANS,
    Args,
    _field_comments,
    check_env_settings,
    env_kwargs,
    suite_of,
)
from evaluate_facts import device_facts, env_facts
from evaluate_rows import (  # noqa: F401  (part of evaluate's surface)
    COLUMNS,
    ID_COLUMNS,
    append_row,
    atomic_open,
    check_out,
    prepare_out,
    read_rows,
    repair_rows,
)
from evaluate_specs import (  # noqa: F401  (part of evaluate's surface)
    SB3_PREFIXES,
    PolicySpec,
    UsageError,
    parse_policies,
    parse_policy,
    parse_seeds,
    run_groups,
    split_top_level,
)


def parse_args(argv: list[str] | None = None) -> Args:
    """Args from the command line (`evaluate_args.parse_args`); a bad value raises a UsageError naming it."""
    return evaluate_args.parse_args(argv, doc=__doc__)


# ----- envs and controllers --------------------------------------------------------------------------------------
def make_env(kwargs: dict):
    import gymnasium as gym

    import envs  # noqa: F401  (registers MoERouting-v0)

    try:
        return gym.make("MoERouting-v0", **kwargs)
    except (ValueError, KeyError) as exc:  # EnvConfig checks every setting and names the bad one
        raise UsageError(f"cannot make the env: {exc}") from exc


def pretrain_served_model(kwargs: dict, progress: bool) -> None:
    """Pretrain the model an env of `kwargs` serves if it is not cached yet, here rather than in `make_env`, so
    that --no-progress hides that bar too."""
    import envs

    try:
        envs.pretrain_served_model("MoERouting-v0", progress, **kwargs)
    except (ValueError, TypeError) as exc:  # EnvConfig names the bad setting
        raise UsageError(f"cannot make the env: {exc}") from exc


def transfer_note(spec: PolicySpec, controller, env) -> str | None:
    """One line naming each served-model or task setting on which a saved policy's run (its config.yaml) differs
    from `env`, with both values and the flag that matches the training; None when they agree or nothing says."""
    import agents

    trained = getattr(controller, "train_env_config", None)
    differences = agents.env_setting_differences(trained, env.unwrapped.config) if trained else []
    if not differences:
        return None
    flags = {"preset": "--preset", "checkpoint": "--checkpoint", "pretrain_steps": "--pretrain-steps", "gpu": "--gpu",
             "interval_s": "--interval-s"}  # fmt: skip

    def fix(name, value):
        if name not in flags:
            return f"EnvConfig.{name}, not an evaluate.py flag"
        return f"leave out {flags[name]}" if value is None else f"{flags[name]} {value}"

    parts = [f"{name} {old!r} (trained) vs {new!r} (here; {fix(name, old)})" for name, old, new in differences]
    return (f"policy {spec.text!r} was trained on another served model or task than this evaluation's: "
            f"{'; '.join(parts)}; it runs as asked, so its results measure a transfer")


def check_controller_specs(specs: list[PolicySpec]) -> None:
    """UsageError now, before any model is pretrained or env built, for a controller spec that cannot be built: an
    unknown name or argument, an entry point that does not import, does not take these arguments or is a class
    without reset() and act() (`agents.check_controller`)."""
    import agents

    for spec in specs:
        if spec.kind == "controller":
            try:
                agents.check_controller(spec.name, **spec.kwargs)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"policy {spec.text!r}: {exc}") from None


def make_controller(spec: PolicySpec, env, device: str):
    """The `Controller` a spec names, checked against the env (UsageError on a bad argument or a model that does
    not fit the env).

    Warns (UserWarning, one line) when a saved policy's run trained it on another served model or task than this
    env's (`transfer_note`, from `agents.env_setting_differences`: preset, checkpoint, pretrain_steps, gpu, action and reward
    settings, ...), naming each setting, both values and the flag that matches the training; it still runs, since
    a transfer may be the point. A policy without its run's config.yaml is not checked.
    """
    import warnings

    import agents

    if spec.kind == "controller":
        try:
            return agents.make_controller(spec.name, env, **spec.kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"policy {spec.text!r}: {exc}") from exc
    try:
        controller = agents.load_policy(spec.path, algo=spec.algo or None, device=device)
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        raise UsageError(f"policy {spec.text!r}: cannot load {spec.path}: {exc}") from exc
    expected = env.observation_space.shape
    got = getattr(getattr(controller, "model", None), "observation_space", None)
    if got is not None and tuple(got.shape) != tuple(expected):
        trained_preset = (getattr(controller, "train_env_config", None) or {}).get("preset")
        served = env.unwrapped.config.model.preset_name
        hint = ""
        if trained_preset and trained_preset != served:  # its run's config.yaml says which: name the flag
            hint = f" Its run served preset {trained_preset!r}, this env {served!r}: pass --preset {trained_preset}."
        raise UsageError(f"policy {spec.text!r} was trained on observations of shape {got.shape}; this env's are "
                         f"{expected} (another preset or expert count? A suite's trained policy is set with "
                         f"--trained-policy PATH, or '' for none).{hint}")
    if note := transfer_note(spec, controller, env):
        # Default filters show each distinct message once: one line per policy, even though the main suite builds
        # its controllers twice (check_policies before training, then the episodes).
        warnings.warn(note, UserWarning, stacklevel=2)
    return controller


# ----- one episode -----------------------------------------------------------------------------------------------
def run_episode(env, controller, episode_seed: int) -> dict:
    """Run one episode; returns its trace: per-interval figures (`steps`) and what the metrics need."""
    import agents

    obs, info = env.reset(seed=episode_seed)
    agents.reset_controller(controller, episode_seed)  # a random controller's actions are the episode's own
    unwrapped = env.unwrapped
    trace = {
        "episode_seed": episode_seed,
        "source": info["source"],
        "interval_s": float(unwrapped.config.interval_s),
        "domains": list(unwrapped.config.domains),
        "shift_tokens": int(unwrapped.shift_tokens),
        "initial_temperature_c": float(info["temperature_c"]),
        "steps": [],
    }
    while True:
        action = controller.act(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        step = {k: _plain(info[k]) for k in stats.STEP_FIELDS}
        step["expert_load"] = [float(x) for x in info["expert_load"]]
        step["reward"] = float(reward)
        trace["steps"].append(step)
        if terminated or truncated:
            return trace


def _plain(x):
    return x.item() if isinstance(x, np.generic) else x


# ----- the comparison loop ---------------------------------------------------------------------------------------
BASELINES = ("no_control", "heuristic")  # the labels a report compares the others with, unless a suite says others


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "policy"


def trace_path(out: Path, label: str, episode_seed: int) -> Path:
    return out / "traces" / f"{slug(label)}__{episode_seed}.json"


def write_json(path: Path, data) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(data, indent=1, default=_plain) + "\n")


def run_policies(args: Args, specs: list[PolicySpec], env_configs: dict[str, dict], out: Path,
                 report_inputs: dict | None = None) -> tuple[list, dict]:
    """Run every policy on every (seed, episode), seeds outermost so an interrupted run keeps whole pairs.

    run_facts.json, written before the first episode, keeps what a later --report-only cannot rebuild elsewhere:
    the device and env facts, the policies' transfer notes and `report_inputs` (`evaluate`'s title, baselines,
    notes and section). Returns the rows of these policies (finished before and now) and {env name: its unwrapped
    env's facts}.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    # Every policy is built before --out changes: a bad spec or an unloadable model must not cost an --overwrite
    # its saved episodes, nor leave an args.json that describes a run that never started.
    envs_, controllers, facts = build_policies(specs, env_configs, args.policy_device, args.progress)
    try:
        done = {(r["label"], r["episode_seed"]) for r in prepare_out(out, args.resume, args.overwrite, specs)}
    except BaseException:
        for env in envs_.values():
            env.close()
        raise
    if (record := _ARGS_TO_SAVE.pop(out, None)) is not None:
        write_json(out / "args.json", record)
    seeds = parse_seeds(args.seeds)
    jobs = [(s, e, p) for s in seeds for e in range(args.episodes) for p in specs]
    # What a later --report-only needs and cannot rebuild on another machine.
    notes = {s.label: n for s in specs if (n := transfer_note(s, controllers[s.label], envs_[s.env]))}
    run = {"device": device_facts(), "envs": facts, "policy_notes": notes}
    write_json(out / "run_facts.json", run | ({"report": report_inputs} if report_inputs is not None else {}))
    (out / "traces").mkdir(exist_ok=True)
    skipped = sum((p.label, 1000 * s + e) in done for s, e, p in jobs)
    bar = tqdm(total=len(jobs), initial=skipped, desc="policies x seeds", disable=not args.progress)
    last_s: dict[str, float] = {}  # each policy's last episode time: the next one is predicted to take as long
    for seed, episode, spec in jobs:
        episode_seed = 1000 * seed + episode
        if (spec.label, episode_seed) in done:
            continue
        elapsed = time.perf_counter() - t_start
        if args.max_wall_s and elapsed + last_s.get(spec.label, 0.0) > args.max_wall_s:
            print(f"\nnote: stopping after {elapsed:.0f} s (--max-wall-s {args.max_wall_s}); continue with --resume")
            break
        bar.set_postfix_str(f"{spec.label} seed {seed}")
        t0 = time.perf_counter()
        trace = run_episode(envs_[spec.env], controllers[spec.label], episode_seed)
        trace.update(label=spec.label, spec=spec.text)
        write_json(trace_path(out, spec.label, episode_seed), trace)
        last_s[spec.label] = time.perf_counter() - t0
        row = dict(label=spec.label, spec=spec.text, env=spec.env, seed=seed, episode=episode,
                   episode_seed=episode_seed, hardware_source=trace["source"],
                   wall_time_s=round(last_s[spec.label], 2), **stats.episode_metrics(trace))
        append_row(out / "episodes.csv", row)
        bar.update(1)
    bar.close()
    for env in envs_.values():
        env.close()
    wanted = {(p.label, 1000 * s + e) for s, e, p in jobs}  # a resumed folder may hold other seeds too
    return [r for r in read_rows(out / "episodes.csv") if (r["label"], r["episode_seed"]) in wanted], facts


def build_policies(specs: list[PolicySpec], env_configs: dict[str, dict], device: str,
                   progress: bool = True) -> tuple[dict, dict, dict]:
    """Every spec's env and controller, built before any episode (or training run) so that a bad spec fails first:
    ({env name: env}, {label: controller}, {env name: its facts}). A served model not yet cached is pretrained
    first, with a progress bar if `progress`."""
    if len({slug(p.label) for p in specs}) < len(specs):
        raise UsageError(f"policy labels {[p.label for p in specs]} clash once made file names; rename one")
    check_controller_specs(specs)
    envs_, controllers, facts = {}, {}, {}
    try:
        for spec in specs:
            if spec.env not in envs_:
                pretrain_served_model(env_configs[spec.env], progress)
                envs_[spec.env] = make_env(env_configs[spec.env])
                facts[spec.env] = env_facts(envs_[spec.env])
            controllers[spec.label] = make_controller(spec, envs_[spec.env], device)
    except BaseException:
        for env in envs_.values():
            env.close()
        raise
    return envs_, controllers, facts


def check_policies(specs: list[PolicySpec], env_configs: dict[str, dict], device: str, progress: bool = True) -> None:
    """UsageError now if a spec cannot run (a bad controller argument, a model trained for another env)."""
    envs_, _, _ = build_policies(specs, env_configs, device, progress)
    for env in envs_.values():
        env.close()


def evaluate(args: Args, specs: list[PolicySpec], env_configs: dict[str, dict], out: Path, title: str,
             baselines: tuple[str, ...] = BASELINES, notes: tuple[str, ...] = (), section: str = "") -> dict:
    """Run, aggregate, write summary.json, report.md and the plots; print the comparison table. Returns the
    summary.

    Args:
        title: report.md's title.
        baselines: the labels whose paired improvement tables the report has (those that ran).
        notes: the suite's notes at the report's top (the policies' transfer notes are added here).
        section: the suite's own section, which the suite appends to report.md once this returns: a key of
            `evaluate_suites.SECTIONS` ("" for none).

    The title, baselines, notes and section go to run_facts.json (`report`) before the first episode, so that
    --report-only rebuilds this same report, of a finished or an interrupted run.
    """
    try:
        stats.require_rliable()  # before the episodes, not after them
    except RuntimeError as exc:
        raise UsageError(str(exc)) from exc
    inputs = {"title": title, "baselines": list(baselines), "notes": list(notes), "section": section}
    rows, facts = run_policies(args, specs, env_configs, out, inputs)
    run = json.loads((out / "run_facts.json").read_text())  # as saved for a later --report-only
    notes += tuple(run["policy_notes"].values())
    return aggregate(args, specs, rows, facts, run["device"], out, title, baselines, notes)


def aggregate(args: Args, specs: list[PolicySpec], rows: list[dict], facts: dict, device: dict, out: Path,
              title: str, baselines: tuple[str, ...] = BASELINES, notes: tuple[str, ...] = ()) -> dict:
    """Aggregate finished rows, write summary.json, report.md and the plots; print the comparison table."""
    labels = [s.label for s in specs]
    expected = len(specs) * len(parse_seeds(args.seeds)) * args.episodes
    if not rows:
        raise UsageError(f"no episode finished within --max-wall-s {args.max_wall_s}; give it more time")
    if len(rows) < expected:
        notes += (f"{len(rows)} of {expected} episodes ran (time budget reached); `--resume` runs the rest.",)
    reps, conf = args.bootstrap_reps, args.confidence
    try:  # every episode and every env on one backend, else a UsageError naming who ran where
        backend = stats.hardware_backend(rows, {s.env: facts[s.env]["source"] for s in specs})
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    summary = {
        "title": title,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "envs": facts,
        "policies": {s.label: {"spec": s.text, "env": s.env} for s in specs},
        "seeds": parse_seeds(args.seeds),
        "episodes_per_seed": args.episodes,
        "seeds_run": sorted({int(r["seed"]) for r in rows}),  # fewer than `seeds` when the time budget was reached
        "episodes_run": {lab: sum(r["label"] == lab for r in rows) for lab in labels},
        "statistic": f"IQM with {int(100 * conf)}% stratified-bootstrap intervals (rliable), {reps} replications",
        "sources": stats.metric_sources(backend),
        "aggregates": {},
        "improvements": {},
        "notes": list(notes),
    }
    agg = stats.summarize(rows, labels, reps=reps, confidence=conf)
    summary["aggregates"] = {lab: {k: e.to_dict() for k, e in d.items()} for lab, d in agg.items()}
    for base in baselines:
        if base in labels:
            imp = stats.improvements(rows, labels, base, reps=reps, confidence=conf)
            summary["improvements"][base] = {lab: {k: e.to_dict() for k, e in d.items()} for lab, d in imp.items()}
    for group, runs in run_groups(labels).items():  # training runs of one method, pooled per baseline
        entry = summary.setdefault("run_groups", {}).setdefault(group, {"runs": runs, "pooled": {}, "improvements": {}})
        for base in summary["improvements"]:
            pooled, estimates = stats.across_runs(rows, runs, base, reps=reps, confidence=conf)
            if estimates:
                entry["pooled"][base] = pooled
                entry["improvements"][base] = {k: e.to_dict() for k, e in estimates.items()}
    write_json(out / "summary.json", summary)
    traces = plots.load_traces(out, labels, slug)
    plots.write_plots(out, summary, traces)
    text = report.write_report(out, summary)
    print(report.console_table(summary))
    print(f"\nwrote {out}/report.md, summary.json, episodes.csv and {len(list(out.glob('*.png')))} plots")
    return summary | {"report_text": text}


# ----- suites ----------------------------------------------------------------------------------------------------
CONTROLLER_NAMES = ("heuristic", "no_control", "load_balance", "fixed_ttt", "kcm_greedy", "random")


def controller_names() -> tuple[str, ...]:
    import agents

    return tuple(getattr(agents, "CONTROLLERS", None) or CONTROLLER_NAMES)


def compare_baselines(args: Args, specs: list[PolicySpec]) -> tuple[str, ...]:
    """The labels a --policies comparison's report compares the others with: --baselines, each one a policy's label
    (else a UsageError naming it), or `BASELINES`."""
    if not args.baselines:
        return BASELINES
    chosen, labels = tuple(split_top_level(args.baselines)), [s.label for s in specs]
    if missing := [b for b in chosen if b not in labels]:
        raise UsageError(f"--baselines {missing[0]!r} is not one of the policies' labels {labels}")
    return chosen


def args_record(args: Args) -> dict:
    """What args.json holds: the arguments as given and the suite run ("compare" for --policies alone)."""
    return dataclasses.asdict(args) | {"suite_run": suite_of(args) or "compare"}


# {--out: the args.json `main` saves there once the run's policies are built}. The suites pass `run_policies` args
# of their own (the GPU suites' preset, a time budget), and a resume is checked against the arguments as given.
_ARGS_TO_SAVE: dict[Path, dict] = {}


def main(argv: list[str] | None = None) -> int:
    from evaluate_suites import SUITE_FUNCTIONS, report_only, require_cuda  # the suites import this module

    _ARGS_TO_SAVE.clear()
    try:
        args = parse_args(argv)
        suite = suite_of(args)
        specs = parse_policies(args.policies, controller_names()) if args.policies and not suite else []
        check_controller_specs(specs)
        baselines = compare_baselines(args, specs)  # a bad one fails before --out is made
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or f"results/eval__{suite or 'compare'}__{stamp}")
        if args.report_only:
            report_only(args, out)
            return 0
        # gpu-full's bench and calibrate parts run no episodes: they share a folder with its compare part
        runs_episodes = not (suite == "gpu-full" and args.part in ("bench", "calibrate"))
        if suite in ("gpu", "gpu-full"):
            require_cuda(suite)  # before anything in --out is written
        if runs_episodes:
            check_out(out, args, suite or "compare")  # before args.json: a refused run leaves the saved one as it was
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot create that folder ({exc.strerror or exc})") from exc
        if runs_episodes:  # saved by run_policies once every policy is built: a refused run leaves the old one
            _ARGS_TO_SAVE[out] = args_record(args)
        elif not (out / "episodes.csv").exists():  # args.json describes the episodes there
            write_json(out / "args.json", args_record(args))
        if suite:
            SUITE_FUNCTIONS[suite](args, out)
        else:
            evaluate(args, specs, {"main": env_kwargs(args)}, out, "Policy comparison", baselines)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished episodes are in episodes.csv; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    import evaluate  # one module object, so the suites raise the UsageError that main catches

    sys.exit(evaluate.main())
