"""Serve the pretrained `default` model across a prose -> code shift and print one row per control interval.

    python -m moe_runtime.demo [--intervals 8] [--interval-tokens 1024] [--shift-tokens 4096]

Pretrains and caches the model first when no checkpoint is cached (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import moe_runtime as mr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moe_runtime.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default", help="MoEConfig preset: tiny, default or gpu (default: default)")
    parser.add_argument("--intervals", type=int, default=8, help="control intervals to serve (default: 8)")
    parser.add_argument("--interval-tokens", type=int, default=1024, help="tokens per interval (default: 1024)")
    parser.add_argument(
        "--shift-tokens",
        type=int,
        default=4096,
        help="prose tokens served before the stream shifts to code (default: 4096)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model and stream seed (default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = parser.parse_args(argv)
    for name in ("intervals", "interval_tokens", "threads"):  # before the model is loaded or pretrained
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be an integer >= 1, got {getattr(args, name)}")
    if args.shift_tokens < 0 or args.seed < 0:
        parser.error(f"--shift-tokens and --seed must be integers >= 0, got {args.shift_tokens}, {args.seed}")
    try:
        cfg = mr.MoEConfig.preset(args.preset, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    try:
        model = mr.load_or_pretrain(cfg)
    except mr.CheckpointError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    schedule = mr.DomainSchedule.shift("prose", "code", args.shift_tokens)
    rt = mr.MoERuntime(cfg, model=model, schedule=schedule, split="test", seed=args.seed)
    print(
        f"model {cfg.preset_name}: d_model {cfg.d_model}, {cfg.n_layers} layers, experts {cfg.expert_widths} "
        f"(top-{cfg.top_k}); shift prose -> code after {args.shift_tokens} tokens; all figures measured on "
        f"{rt.device.type}"
    )
    print(
        f"{'int':>3} {'domain':<6} {'loss':>6} {'entropy':>7} {'GFLOP':>6} {'ms':>6}  load share per expert (narrow -> wide)"
    )
    for i in range(args.intervals):
        rep = rt.step(args.interval_tokens)
        share = np.asarray(rep.expert_token_counts).sum(0)
        share = share / share.sum()
        print(
            f"{i:>3} {rep.domain:<6} {rep.loss:>6.3f} {rep.router_entropy:>7.3f} {rep.flops_total / 1e9:>6.2f} "
            f"{rep.wall_time_s * 1e3:>6.1f}  " + " ".join(f"{s:.2f}" for s in share)
        )


if __name__ == "__main__":
    main()
