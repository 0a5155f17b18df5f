"""Learning curves of `train_agent.py` runs, with baselines on the same held-out episodes.

    python scripts/learning_curve.py runs/ppo_default_s0 runs/ppo_kcm_s0 --baselines no_control,kcm_greedy \
        --out results/learning_curve

For each run: the training episodes' mean return (TensorBoard's `rollout/ep_rew_mean`, every resumed session
merged) and the held-out evaluations (`evaluations.npz`: mean and spread of the evaluation episodes). Each baseline
controller plays the held-out episodes the runs were evaluated on (same env kwargs and `--eval-seed` as the first
run's `config.yaml`), so its line is directly comparable with the evaluation points. Every curve says its source
(`evaluate_stats.Metric.source_on` of the return): `mixed` on the simulated backend (the simulated GPU prices energy,
heat and latency; the loss term is measured), `measured` on a GPU. Writes `<out>.png` and `<out>.json`;
`--from-json <out>.json` draws a saved file again without the runs (to `<out>.png` beside it, unless `--out` says
where).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def training_curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean training-episode return) from every TensorBoard event file under `run/tb`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run / "tb").rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "rollout/ep_rew_mean" in acc.Tags()["scalars"]:
            points.update({e.step: e.value for e in acc.Scalars("rollout/ep_rew_mean")})
    steps = np.array(sorted(points))
    return steps, np.array([points[s] for s in steps])


def return_source(backend: str) -> str:
    """The source label of an episode return on `backend` (`simulated` or `measured`), as evaluate.py's."""
    import evaluate_stats

    return evaluate_stats.METRIC_BY_NAME["episode_return"].source_on(backend)


def run_source(config: dict) -> str:
    """The source of a run's returns, from the backend its `config.yaml` asked for (`env_kwargs.telemetry`); a run
    with `telemetry: auto` chose on its machine without saying which, so it is `unknown`."""
    telemetry = (config.get("env_kwargs") or {}).get("telemetry") or config["args"].get("telemetry", "auto")
    backend = {"simulated": "simulated", "nvml": "measured"}.get(telemetry)
    return return_source(backend) if backend else f"unknown (telemetry {telemetry!r})"


class BaselineError(ValueError):
    """A baseline controller that could not be built for the runs' env."""


def baseline_returns(config: dict, controller: str, episodes: int) -> tuple[list[float], str]:
    """Returns of `controller` on the held-out episodes `train_agent.py`'s evaluation callback plays, and their
    source (from the env's `info["source"]`)."""
    from agents import make_controller
    from train_agent import make_vec_env

    args = config["args"]
    env_kwargs = config.get("eval_env_kwargs") or {"split": "validation", **(config.get("env_kwargs") or {})}
    venv = make_vec_env(args["env_id"], env_kwargs, 1, args["eval_seed"], "dummy")
    try:
        try:
            policy = make_controller(controller, venv)
        except (TypeError, ValueError) as exc:  # what only building it shows: an argument's value, the env it got
            raise BaselineError(f"--baselines {controller}: {exc}") from exc
        policy.reset()
        venv.seed(args["eval_seed"])
        obs, returns, total, backends = venv.reset(), [], 0.0, set()
        while len(returns) < episodes:
            obs, reward, done, infos = venv.step(policy.act(obs[0])[None])
            total += float(reward[0])
            backends.add(infos[0]["source"])
            if done[0]:
                returns.append(total)
                total = 0.0
                policy.reset()
        if not backends:  # no episode asked for
            return returns, "none (no episode)"
        (backend,) = backends  # one env, one backend
        return returns, return_source(backend)
    finally:
        venv.close()


def curves_source(sources: list[str]) -> dict:
    """{"source": the label all curves share, "source_note": what it means} (`evaluate_stats.SOURCE_NOTES`); curves
    that do not share one are said to differ, each with its own `source`."""
    import evaluate_stats

    if len(set(sources)) != 1:
        return {"source": "differs by curve", "source_note": "each run and baseline has its own source"}
    return {"source": sources[0], "source_note": evaluate_stats.SOURCE_NOTES.get(sources[0], sources[0])}


def read_curve_config(path: Path) -> dict:
    """A run's `config.yaml` (`train_config.read_run_config`), with the evaluation settings the curves need; a
    ValueError naming the file if not."""
    from train_config import read_run_config

    config = read_run_config(path)  # None only when the file is missing, which main() has ruled out
    try:
        int(config["args"]["eval_episodes"]), int(config["args"]["eval_seed"]), str(config["args"]["env_id"])  # noqa: B018
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} lacks the evaluation settings ({type(exc).__name__}: {exc})") from None
    return config


def read_curves(path: Path) -> dict:
    """The curves a run of this script saved (`<out>.json`); a ValueError naming the file, and the field, if it is
    not one, or if it predates the source labels (a curve must say where its returns came from)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--from-json {str(path)!r}: not a readable curves file ({exc})") from None
    keys = ("runs", "baselines", "eval_episodes", "source")
    if missing := [k for k in keys if not isinstance(data, dict) or k not in data]:
        raise ValueError(f"--from-json {str(path)!r} lacks {missing}: not a curves file of this script, or one "
                         "written before curves named their source; run the script on the run folders again")  # fmt: skip
    if problem := _curves_problem(data):
        raise ValueError(f"--from-json {str(path)!r}: {problem}; not a curves file of this script")
    return data


def _curves_problem(data: dict) -> str | None:
    """What in a curves file `write_curves` could not draw, or None."""

    def numbers(value, depth: int = 1) -> bool:  # a list of numbers (depth 1) or of equal-length lists of them (2)
        if not isinstance(value, list):
            return False
        if depth == 2:
            return all(numbers(row) for row in value) and len({len(row) for row in value}) <= 1
        return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)

    episodes = data["eval_episodes"]
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 0:
        return f"eval_episodes is {episodes!r}, not an integer >= 0"
    if not isinstance(data["runs"], dict) or not isinstance(data["baselines"], dict):
        return "runs and baselines must each map a label to its curve"
    for label, entry in data["runs"].items():
        if not isinstance(entry, dict):
            return f"run {label!r} is a {type(entry).__name__}, not a curve"
        for key, depth in (("train_steps", 1), ("train_return", 1), ("eval_steps", 1), ("eval_returns", 2)):
            if key in entry and not numbers(entry[key], depth):
                return f"run {label!r}: {key} is not a list of numbers" + (" per evaluation" if depth == 2 else "")
            if key not in entry and key.startswith("train"):
                return f"run {label!r} lacks {key}"
        for steps, values in (("train_steps", "train_return"), ("eval_steps", "eval_returns")):
            if len(entry.get(steps, [])) != len(entry.get(values, [])):
                return f"run {label!r}: {steps} and {values} differ in length"
    for name, returns in data["baselines"].items():
        if not numbers(returns):
            return f"baseline {name!r}: its returns are not a list of numbers"
    return None


def write_curves(data: dict, stem: Path) -> None:
    """Draw `data` (main's curves: runs, baselines, their sources) to `<stem>.png` and save it as `<stem>.json`, each
    written atomically."""
    png_path, json_path = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".json")
    eval_episodes = int(data["eval_episodes"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, entry) in enumerate(data["runs"].items()):
        c = colors[i % len(colors)]
        if entry["train_steps"]:  # one point (a short run) is no line: mark it, or the faint curve is not there
            marker = "o" if len(entry["train_steps"]) == 1 else None
            ax.plot(entry["train_steps"], entry["train_return"], color=c, alpha=0.35, lw=1, marker=marker)
        if "eval_steps" in entry:
            r = np.array(entry["eval_returns"])
            ax.errorbar(entry["eval_steps"], r.mean(1), yerr=r.std(1), color=c, marker="o", capsize=3, label=label)
    for j, (name, returns) in enumerate(data["baselines"].items()):
        ax.axhline(np.mean(returns), color=colors[(len(data["runs"]) + j) % len(colors)], ls="--", label=name)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"episode return [{data['source']}]")
    faint = "; faint: training episodes" if any(e["train_steps"] for e in data["runs"].values()) else ""
    plural = "s" if eval_episodes != 1 else ""
    ax.set_title(f"held-out evaluation (markers: mean ± sd of {eval_episodes} episode{plural}){faint}")
    if ax.get_legend_handles_labels()[0]:  # a run with no evaluation yet and no baseline has nothing to name
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_name(stem.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, png_path)
    tmp_json = stem.with_name(stem.name + ".tmp.json")
    tmp_json.write_text(json.dumps(data, indent=1))
    os.replace(tmp_json, json_path)
    print(f"wrote {png_path} and {json_path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="train_agent.py run folders (with config.yaml)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="draw the curves saved in this <out>.json again (no runs needed), to --out")  # fmt: skip
    parser.add_argument("--labels", default="", help="comma-separated labels, one per run (default: folder names)")
    parser.add_argument("--baselines", default=None,
                        help="comma-separated controller names (or your own as module.path:Name), or '' (default: "
                        "no_control)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix: PATH.json and PATH.png (default: results/learning_curve, "
                        "the committed figure; with --from-json, beside the JSON: FILE.png)")  # fmt: skip
    args = parser.parse_args(argv)
    out = args.out or (args.from_json if args.from_json is not None else Path("results/learning_curve"))
    stem = out.with_suffix("") if out.suffix in (".png", ".json") else out  # keep 'curve_v1.5'
    if args.from_json is not None:
        if args.runs:
            parser.error("give run folders or --from-json, not both")
        if given := [flag for flag, value in (("--labels", args.labels), ("--baselines", args.baselines)) if value]:
            verb = "apply" if len(given) > 1 else "applies"
            parser.error(f"{' and '.join(given)} {verb} to curves of run folders; a --from-json file keeps its own")
        try:
            write_curves(read_curves(args.from_json), stem)
        except ValueError as exc:
            parser.error(str(exc))
        return
    if not args.runs:
        parser.error("give train_agent.py run folders (or --from-json FILE to redraw saved curves)")
    from agents import CONTROLLERS, check_controller
    from agents.callbacks import EVALUATIONS_FILE, read_eval_history

    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
    if len(set(labels)) != len(labels):  # one label per curve: a repeated one would keep only the last run's
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        parser.error(f"runs need distinct labels, {repeated} repeats: name them with --labels")
    baselines = [name for name in ("no_control" if args.baselines is None else args.baselines).split(",") if name]
    unknown = [name for name in baselines if name not in CONTROLLERS and ":" not in name]  # or module.path:Name
    if unknown:
        parser.error(f"--baselines {unknown} not among the controllers {sorted(CONTROLLERS)} (or module.path:Name)")
    for name in baselines:  # your own controller must import, and be one, before any env is built
        try:
            check_controller(name)
        except (TypeError, ValueError) as exc:
            parser.error(f"--baselines: {exc}")
    configs = []
    for run in args.runs:
        if not (run / "config.yaml").is_file():
            parser.error(f"{run} is not a train_agent.py run folder (no config.yaml)")
        try:
            configs.append(read_curve_config(run / "config.yaml"))
        except ValueError as exc:
            parser.error(str(exc))
    eval_episodes = int(configs[0]["args"]["eval_episodes"])
    data: dict = {
        "runs": {},
        "baselines": {},
        "baseline_sources": {},
        "eval_episodes": eval_episodes,
        "eval_seed": configs[0]["args"]["eval_seed"],
    }
    for run, label, config in zip(args.runs, labels, configs):
        steps, train = training_curve(run)
        entry: dict = {"folder": str(run), "source": run_source(config)}
        entry["train_steps"], entry["train_return"] = steps.tolist(), train.tolist()
        if (run / EVALUATIONS_FILE).exists():
            try:
                history = read_eval_history(run / EVALUATIONS_FILE)
            except ValueError as exc:
                parser.error(str(exc))
            entry["eval_steps"], entry["eval_returns"] = history["timesteps"].tolist(), history["results"].tolist()
        if "warm_start" in config:
            entry["warm_start"] = config["warm_start"]
        data["runs"][label] = entry
    for name in baselines:
        try:
            data["baselines"][name], data["baseline_sources"][name] = baseline_returns(configs[0], name, eval_episodes)
        except BaselineError as exc:
            parser.error(str(exc))
        print(f"{name}: held-out mean return {np.mean(data['baselines'][name]):.1f} [{data['baseline_sources'][name]}]")
    data.update(curves_source([e["source"] for e in data["runs"].values()] + list(data["baseline_sources"].values())))

    write_curves(data, stem)


if __name__ == "__main__":
    main()
