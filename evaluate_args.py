"""The command line of `evaluate.py`: its arguments as one dataclass (each field a --flag, its comment the help), the
suites' defaults, and the checks that refuse a bad value, or env settings `EnvConfig` would refuse, before anything
runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from agents.run_config import TRAINING_SEEDS_FROM
from evaluate_specs import UsageError, parse_seeds

REPO = Path(__file__).resolve().parent  # --trained-policy resolves against it, as the suites do (repo_path)
SUITES = ("main", "routers", "ttt-allocation", "single-gpu", "gpu", "gpu-full")
GPU_FULL_PARTS = ("bench", "calibrate", "compare")
SUITES_WITHOUT_POLICIES = ("single-gpu", "gpu", "gpu-full")  # they run their own fixed sets
# (seeds, intervals per episode) when --seeds / --episode-intervals are not given; main fits 15 minutes on 2 cores
# and runs the episode length the committed policy trained on (64)
SUITE_DEFAULTS = {"": ("0-4", 64), "main": ("0-4", 64), "routers": ("0-4", 64), "ttt-allocation": ("0-4", 64),
                  "single-gpu": ("0-4", 64), "gpu": ("0-2", 30), "gpu-full": ("0-4", 60)}


@dataclass
class Args:
    """Command-line arguments (each field is a --flag; underscores become dashes)."""

    policies: str = ""  # comma-separated policy specs (see the module docstring); none given: --suite main
    baselines: str = ""  # labels the report compares every other policy with, e.g. no_control,kcm_greedy ("": no_control,heuristic); not with --suite
    suite: str = ""  # main, routers, ttt-allocation, single-gpu, gpu, gpu-full
    part: str = ""  # gpu-full: bench, calibrate or compare (each fits 10 minutes on one H100)
    seeds: str = ""  # seeds, e.g. "0,1,2" or "0-9" (each gives `episodes` paired episodes); "": the suite's default
    episodes: int = 1  # episodes per seed
    preset: str = "default"  # MoEConfig preset of the served model (tiny for tests, gpu on a GPU)
    telemetry: str = "auto"  # auto (NVML if a GPU is present), nvml (measured), simulated
    gpu: str = "H100"  # GPU spec the simulated backend models
    split: str = "test"  # corpus split (test: held out from training)
    episode_intervals: int = 0  # control intervals per episode; 0: the suite's default
    interval_s: float = 1.0  # seconds per control interval
    workload: str = "random"  # demand profile: constant, step, diurnal, bursty, random
    load: float = 0.6  # mean demand as a fraction of the deployment's capacity
    pretrain_steps: int = 0  # pretraining steps of the served model (0: the preset's default, as cached)
    checkpoint: str = ""  # a model checkpoint to serve instead of the cached pretrained one
    torch_threads: int = 0  # torch CPU threads of the served model (0: the env's default, 2)
    out: str = ""  # output folder (default results/eval__<suite>__<date>)
    resume: bool = False  # continue an interrupted run in --out: skip finished rows
    overwrite: bool = False  # start over in an --out that already has results
    bootstrap_reps: int = 2000  # bootstrap replications per interval estimate
    confidence: float = 0.95  # interval coverage
    policy_device: str = "cpu"  # torch device of SB3 policies
    trained_policy: str = "results/ppo_kcm_warm/best_model.zip"  # the committed policy (main, routers, ttt, gpu)
    main_budget_s: int = 840  # main: the whole job's wall time; evaluation starts no episode past it, s
    train_seconds: int = 240  # main: wall time of the short PPO training run, s (0: skip it)
    train_timesteps: int = 100_000  # main: at most this many PPO steps in that run
    train_n_envs: int = 1  # main: env workers of that run
    gpu_pretrain_steps: int = 300  # gpu: pretraining steps of the gpu preset (cached in the run folder)
    max_wall_s: int = 0  # stop starting episodes after this many seconds (0: no limit); continue with --resume
    progress: bool = True  # show the progress bar (--no-progress to hide it)
    report_only: bool = False  # rebuild summary, report and plots from --out's episodes.csv and traces; run nothing


# ----- parsing ---------------------------------------------------------------------------------------------------
def _field_comments(cls) -> dict[str, str]:
    """The comment after each field of a dataclass (`name: type = default  # comment`), for --help."""
    import inspect
    import io
    import tokenize

    docs, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:  # a field's name opens its line
            name = tok.string
        elif tok.type == tokenize.COMMENT and name is not None:
            docs[name] = tok.string.lstrip("# ").strip()
        elif tok.type == tokenize.NEWLINE:
            name = None
    return docs


def parse_args(argv: list[str] | None = None, doc: str = "") -> Args:
    """Args from the command line (--help shows `doc`: its first paragraph, and from its third on as the epilog);
    a bad value raises a UsageError naming it and what is allowed."""
    import argparse

    paragraphs = doc.split("\n\n", 2)
    parser = argparse.ArgumentParser(description=paragraphs[0], epilog=paragraphs[2] if len(paragraphs) > 2 else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = _field_comments(Args)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default!r})".replace("%", "%%")  # argparse formats help
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=help_text)
    args = Args(**vars(parser.parse_args(argv)))
    if args.suite and args.suite not in SUITES:
        raise UsageError(f"--suite {args.suite!r} is not one of {', '.join(SUITES)}")
    if args.telemetry not in ("auto", "nvml", "simulated"):
        raise UsageError(f"--telemetry {args.telemetry!r} is not auto, nvml or simulated")
    suite = suite_of(args)
    if args.baselines and args.report_only:
        raise UsageError("--report-only rebuilds the run's report with the baselines it ran with; drop --baselines")
    if args.baselines and suite:
        raise UsageError(f"--baselines is for a --policies comparison; --suite {suite} compares with its own")
    seeds, intervals = SUITE_DEFAULTS[suite]
    args.seeds, args.episode_intervals = args.seeds or seeds, args.episode_intervals or intervals
    seed_list = parse_seeds(args.seeds)  # a bad --seeds fails here, not after the main suite's training run
    for name in ("episodes", "episode_intervals", "bootstrap_reps"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    for name in ("train_timesteps", "train_n_envs", "gpu_pretrain_steps", "main_budget_s"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("train_seconds", "max_wall_s", "pretrain_steps", "torch_threads"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (0: {ZERO_MEANS[name]}), got {getattr(args, name)}")
    if args.episodes > 1000:  # episode seeds are 1000 x seed + episode: more would reuse another seed's
        raise UsageError(f"--episodes must be <= 1000 (more would repeat another seed's episodes), got {args.episodes}")
    if (last := 1000 * max(seed_list) + args.episodes - 1) >= TRAINING_SEEDS_FROM:
        raise UsageError(f"--seeds {args.seeds!r} reaches episode seed {last} (1000 x seed + episode); held-out "
                         f"episodes stay below {TRAINING_SEEDS_FROM}, where the training episodes' seeds start")
    if not 0 < args.interval_s < math.inf:
        raise UsageError(f"--interval-s must be a positive, finite number of seconds, got {args.interval_s}")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite starts it over: give one")
    given_policy = args.trained_policy and args.trained_policy != Args.trained_policy  # the default may be absent
    if given_policy and not any(p.exists() for p in (Path(args.trained_policy), REPO / args.trained_policy)):
        raise UsageError(f"--trained-policy {args.trained_policy!r} does not exist (give a policy zip, or '' for none)")
    if args.resume and not args.out:
        raise UsageError("--resume needs --out: the folder of the run to continue")
    if args.policies and suite in SUITES_WITHOUT_POLICIES:
        raise UsageError(f"--suite {suite} runs its own policies and takes no --policies (got {args.policies!r}); "
                         "--suite main, routers and ttt-allocation add them")  # fmt: skip
    if args.part and suite != "gpu-full":
        raise UsageError(f"--part {args.part!r} is for --suite gpu-full only")
    if suite == "gpu-full" and args.part not in GPU_FULL_PARTS:  # at parsing, not after the CUDA check
        raise UsageError(f"--suite gpu-full needs --part, one of {', '.join(GPU_FULL_PARTS)} (each fits 10 minutes), "
                         f"got {args.part!r}")  # fmt: skip
    try:
        import torch

        torch.device(args.policy_device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--policy-device {args.policy_device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from exc
    if not args.report_only:
        check_env_settings(args)
    return args


ZERO_MEANS = {"train_seconds": "no training run", "max_wall_s": "no limit", "pretrain_steps": "the preset's default",
              "torch_threads": "the env's default"}


def check_env_settings(args: Args) -> None:
    """The env settings of the command line as `EnvConfig` checks them, and CUDA and NVML where they are asked for:
    a UsageError now rather than after the main suite's minutes of training."""
    from envs import EnvConfig, measured_backend_unavailable
    from moe_runtime import cache_dir_problem

    if args.telemetry == "nvml" and (reason := measured_backend_unavailable()):
        raise UsageError(f"--telemetry nvml: {reason}")
    if reason := cache_dir_problem():  # where the served model's checkpoint is cached (or pretrained into)
        raise UsageError(reason)
    try:
        EnvConfig.from_kwargs(**env_kwargs(args))
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"the env settings: {exc}") from exc


def env_kwargs(args: Args, **overrides) -> dict:
    """Keyword arguments of `gym.make("MoERouting-v0", ...)` for this run."""
    import envs

    try:
        workload = envs.Workload(profile=args.workload, load=args.load)
    except ValueError as exc:
        raise UsageError(f"--workload/--load: {exc}") from exc
    kw = dict(preset=args.preset, telemetry=args.telemetry, gpu=args.gpu, split=args.split,
              episode_intervals=args.episode_intervals, interval_s=args.interval_s, workload=workload)
    if args.pretrain_steps:
        kw["pretrain_steps"] = args.pretrain_steps
    if args.checkpoint:
        kw["checkpoint"] = args.checkpoint
    if args.torch_threads:
        kw["torch_threads"] = args.torch_threads
    return {**kw, **overrides}


def suite_of(args: Args) -> str:
    """The suite a run of these arguments runs: --suite, else "main" without --policies, else "" (a comparison of
    the --policies alone)."""
    return args.suite or ("" if args.policies else "main")
