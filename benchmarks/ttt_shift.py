"""TTT under a domain shift: the prose-pretrained `default` model meets Python code, with TTT off, frequent small
updates and infrequent large ones (and the default setting).

For each setting a fresh runtime serves `lead_in_tokens` of prose and then `adapt_tokens` of code (the `test`
split) in control intervals of `interval_tokens`, training as its schedule says. Every `eval_every_tokens` after
the shift the adapted model is scored, without training, on the same held-out code tokens (the first
`heldout_tokens` of the `validation` split, which shares no byte with the stream). Reported, all `measured` on this
machine: the held-out loss curves, the loss served online, TTT wall time per token trained (the hardware-utilisation
argument of LaCT: large chunks amortise fixed per-update costs; the ratio small / large), TTT time until each
setting first reaches a common loss, and TTT overhead as a share of inference (serving) time.

    python benchmarks/ttt_shift.py [--adapt-tokens 16384] [--threads 2] [--out results/ttt_shift.json]

Writes JSON and a PNG of the curves beside it; the last line is
`post-shift loss: off X, frequent-small Y, infrequent-large Z` (mean held-out code loss after `adapt_tokens`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

import moe_runtime as mr


@dataclass
class Args:
    preset: str = "default"
    """MoEConfig preset (pretrained on prose and cached by `moe_runtime.load_or_pretrain`)."""
    method: str = "fast_weights"
    """TTTConfig.method: fast_weights, lora or tent."""
    lead_in_tokens: int = 2048
    """prose tokens served (with TTT as scheduled) before the shift."""
    adapt_tokens: int = 16384
    """code tokens served after the shift; the final loss is taken here."""
    eval_every_tokens: int = 2048
    """adaptation tokens between held-out evaluations (a multiple of every setting's frequency keeps them fair)."""
    heldout_tokens: int = 4096
    """held-out code tokens (validation split) scored at each evaluation."""
    interval_tokens: int = 1024
    """tokens per control interval (`MoERuntime.step`)."""
    threads: int = 2
    """torch CPU threads."""
    seed: int = 0
    """stream seed."""
    random_init: bool = False
    """use an untrained model (smoke tests only: no pretraining, the losses mean nothing)."""
    out: str = "results/ttt_shift.json"
    """JSON output; the PNG goes beside it."""


# name -> (frequency_tokens, chunk_tokens); `off` first and the three the last line names.
SETTINGS = {
    "off": (0, 512),
    "frequent-small": (256, 256),
    "infrequent-large": (2048, 2048),
    "default": (mr.DEFAULT_FREQUENCY_TOKENS, mr.DEFAULT_CHUNK_TOKENS),
}


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type={"int": int, "str": str}[f.type], default=f.default)
    args = Args(**vars(parser.parse_args()))
    if args.adapt_tokens % args.eval_every_tokens or args.eval_every_tokens % args.interval_tokens:
        parser.error("adapt-tokens must be a multiple of eval-every-tokens, and that of interval-tokens")
    return args


def heldout_batch(cfg: mr.MoEConfig, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `tokens` of the code validation split as [N, seq_len] inputs and targets."""
    data = mr.load_corpus("code").splits["validation"]
    n = tokens // cfg.seq_len
    x = torch.from_numpy(data[: n * cfg.seq_len].astype(np.int64)).view(n, cfg.seq_len)
    y = torch.from_numpy(data[1 : n * cfg.seq_len + 1].astype(np.int64)).view(n, cfg.seq_len)
    return x, y


@torch.inference_mode()
def heldout_loss(engine: mr.TTTEngine, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean next-token loss (nats) of the adapted model on the held-out batch; no training."""
    total = 0.0
    for i in range(0, len(x), 16):
        total += float(engine.forward(x[i : i + 16], y[i : i + 16]).loss) * x[i : i + 16].numel()
    return total / x.numel()


def run_setting(args: Args, model: mr.MoETransformer, freq: int, chunk: int, heldout) -> dict:
    """Serve lead-in prose, then code, with one TTT schedule; held-out curve, online losses and timings."""
    cfg = model.cfg
    engine = mr.TTTEngine(mr.TTTConfig(method=args.method))
    schedule = mr.DomainSchedule.shift("prose", "code", args.lead_in_tokens)
    rt = mr.MoERuntime(cfg, model=model, schedule=schedule, split="test", seed=args.seed, ttt=engine)
    rt.apply(mr.ControlAction(ttt_frequency_tokens=freq, ttt_chunk_tokens=chunk))
    served_s = ttt_s = 0.0
    tokens_trained = updates = skipped = 0
    update_walls: list[float] = []  # mean wall time of an update, per interval with updates
    online: list[float] = []

    def serve(n_tokens: int, after_shift: bool) -> None:
        nonlocal served_s, ttt_s, tokens_trained, updates, skipped
        for _ in range(n_tokens // args.interval_tokens):
            rep = rt.step(args.interval_tokens)
            if after_shift:
                online.append(rep.loss)
            served_s += rep.wall_time_s - rep.ttt_wall_time_s
            ttt_s += rep.ttt_wall_time_s
            tokens_trained += rep.ttt_tokens_trained
            updates += rep.ttt_updates
            skipped += rep.ttt_skipped_updates
            if rep.ttt_updates + rep.ttt_skipped_updates:
                update_walls.append(rep.ttt_wall_time_s / (rep.ttt_updates + rep.ttt_skipped_updates))

    serve(args.lead_in_tokens, after_shift=False)
    curve = [(0, heldout_loss(engine, *heldout))]
    for done in range(args.eval_every_tokens, args.adapt_tokens + 1, args.eval_every_tokens):
        serve(args.eval_every_tokens, after_shift=True)
        curve.append((done, heldout_loss(engine, *heldout)))
    return dict(
        frequency_tokens=freq,
        chunk_tokens=chunk,
        heldout_curve=[dict(tokens_after_shift=t, loss=loss) for t, loss in curve],
        final_heldout_loss=curve[-1][1],
        online_loss_after_shift=float(np.mean(online)),
        updates=updates,
        skipped_updates=skipped,
        tokens_trained=tokens_trained,
        ttt_wall_s=ttt_s,
        serving_wall_s=served_s,
        ttt_overhead=ttt_s / served_s,
        ttt_s_per_token_trained=ttt_s / tokens_trained if tokens_trained else float("nan"),
        median_update_s=float(np.median(update_walls)) if update_walls else float("nan"),
        serving_tokens=args.lead_in_tokens + args.adapt_tokens,
    )


def ttt_time_to_loss(result: dict, target: float, args: Args) -> float:
    """TTT wall time (s, pro rata over the run) spent until the held-out curve first reaches `target`."""
    total_tokens = args.lead_in_tokens + args.adapt_tokens
    for point in result["heldout_curve"]:
        if point["loss"] <= target:
            return result["ttt_wall_s"] * (args.lead_in_tokens + point["tokens_after_shift"]) / total_tokens
    return float("nan")


def plot(results: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in results.items():
        t = [p["tokens_after_shift"] for p in r["heldout_curve"]]
        ax[0].plot(t, [p["loss"] for p in r["heldout_curve"]], marker="o", ms=3, label=name)
        ms = r["median_update_s"] * 1e3
        label = f"{name}: {r['ttt_overhead']:.0%} of inference" + (f", {ms:.0f} ms/update" if np.isfinite(ms) else "")
        ax[1].bar(name, r["ttt_s_per_token_trained"] * 1e6 if r["tokens_trained"] else 0.0, label=label)
    ax[0].set_xlabel("code tokens served after the shift")
    ax[0].set_ylabel("held-out code loss (nats/byte)")
    ax[0].set_title("held-out loss after the prose -> code shift")
    ax[0].grid(alpha=0.3)
    ax[0].legend()
    ax[1].set_ylabel("TTT wall time per token trained (us)")
    ax[1].set_title("cost of training (measured)")
    ax[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = mr.MoEConfig.preset(args.preset)
    model = mr.MoETransformer(cfg) if args.random_init else mr.load_or_pretrain(cfg)
    heldout = heldout_batch(cfg, args.heldout_tokens)
    start = time.perf_counter()
    results = {name: run_setting(args, model, f, c, heldout) for name, (f, c) in SETTINGS.items()}
    small, large = results["frequent-small"], results["infrequent-large"]
    lact_ratio = small["ttt_s_per_token_trained"] / large["ttt_s_per_token_trained"]
    target = max(small["final_heldout_loss"], large["final_heldout_loss"])
    time_to_target = {n: ttt_time_to_loss(results[n], target, args) for n in ("frequent-small", "infrequent-large")}

    print(
        f"{args.preset} preset, method {args.method}, {args.threads} threads; held-out: {args.heldout_tokens} code tokens"
    )
    print(f"{'setting':<17} {'freq':>5} {'chunk':>5} {'updates':>7} {'held-out loss by tokens after shift':<45}")
    for name, r in results.items():
        losses = " ".join(f"{p['loss']:.3f}" for p in r["heldout_curve"])
        print(f"{name:<17} {r['frequency_tokens']:>5} {r['chunk_tokens']:>5} {r['updates']:>7} {losses}")
    print(
        f"{'setting':<17} {'online':>7} {'final':>7} {'TTT s':>7} {'serve s':>7} {'overhead':>8} {'us/tok trained':>14}"
    )
    for name, r in results.items():
        us = r["ttt_s_per_token_trained"] * 1e6
        print(
            f"{name:<17} {r['online_loss_after_shift']:>7.3f} {r['final_heldout_loss']:>7.3f} {r['ttt_wall_s']:>7.2f} "
            f"{r['serving_wall_s']:>7.2f} {r['ttt_overhead']:>8.1%} {us:>14.1f}"
        )
    print(
        f"LaCT ratio (TTT wall time per token trained, small / large chunks): {lact_ratio:.2f}x; "
        f"TTT time to reach held-out loss {target:.3f}: frequent-small {time_to_target['frequent-small']:.2f} s, "
        f"infrequent-large {time_to_target['infrequent-large']:.2f} s"
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        source="measured",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device="cpu",
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        torch=torch.__version__,
        corpus_sha={d: mr.load_corpus(d).sha256[:12] for d in ("prose", "code")},
        model=cfg.to_dict(),
        ttt=dataclasses.asdict(mr.TTTConfig(method=args.method)),
        wall_s=time.perf_counter() - start,
    )
    summary = dict(lact_ratio=lact_ratio, common_loss=target, ttt_s_to_common_loss=time_to_target)
    out.write_text(
        json.dumps(dict(args=dataclasses.asdict(args), meta=meta, summary=summary, settings=results), indent=1)
    )
    plot(results, out.with_suffix(".png"), f"{args.preset}, {args.method}, measured on CPU ({args.threads} threads)")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    off = results["off"]["final_heldout_loss"]
    print(
        f"post-shift loss: off {off:.3f}, frequent-small {small['final_heldout_loss']:.3f}, "
        f"infrequent-large {large['final_heldout_loss']:.3f}"
    )
