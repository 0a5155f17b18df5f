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
import os
import pathlib
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch
from _cli import check_out_file, field_help, positive_int, thread_count, write_atomic, write_json_atomic

import moe_runtime as mr
from evaluate_facts import device_facts


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
    timing_rounds: int = 7
    """rounds of the interleaved update timing (medians)."""
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    helps = field_help(Args)
    for f in dataclasses.fields(Args):
        flag, help_text = f"--{f.name.replace('_', '-')}", helps[f.name]
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.type == "int":
            # Token counts, threads and rounds divide or are looped over: zero would divide by zero or time nothing.
            kind = {"seed": int, "threads": thread_count}.get(f.name, positive_int)
            parser.add_argument(flag, type=kind, default=f.default, help=help_text)
        else:
            choices = mr.TTT_METHODS if f.name == "method" else None
            parser.add_argument(flag, choices=choices, default=f.default, help=help_text)
    args = Args(**vars(parser.parse_args()))
    try:
        seq_len = mr.MoEConfig.preset(args.preset).seq_len
    except ValueError as exc:
        parser.error(str(exc))
    if args.seed < 0:  # the token stream's numpy generator takes no negative seed
        parser.error(f"--seed must be a non-negative integer, got {args.seed}")
    for name in ("interval_tokens", "heldout_tokens"):  # both are cut into whole sequences
        if getattr(args, name) < seq_len:
            parser.error(
                f"--{name.replace('_', '-')} must be at least the {args.preset} preset's sequence length "
                f"({seq_len}), got {getattr(args, name)}"
            )
    if args.adapt_tokens % args.eval_every_tokens or args.eval_every_tokens % args.interval_tokens:
        parser.error(
            f"--adapt-tokens ({args.adapt_tokens}) must be a multiple of --eval-every-tokens "
            f"({args.eval_every_tokens}), and that of --interval-tokens ({args.interval_tokens})"
        )
    check_out_file(parser, "--out", args.out)
    png = pathlib.Path(args.out).with_suffix(".png")
    if png.is_dir():
        parser.error(f"--out {args.out}: the plot beside it, {png}, is a directory; give another .json file path")
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


@dataclass
class SettingRun:
    """One TTT schedule's runtime and what it has done so far."""

    name: str
    frequency_tokens: int
    chunk_tokens: int
    engine: mr.TTTEngine
    runtime: mr.MoERuntime
    served_s: float = 0.0
    ttt_s: float = 0.0
    updates: int = 0
    skipped: int = 0
    tokens_trained: int = 0
    online: list = dataclasses.field(default_factory=list)
    curve: list = dataclasses.field(default_factory=list)

    def step(self, tokens: int, after_shift: bool) -> None:
        rep = self.runtime.step(tokens)
        if after_shift:
            self.online.append(rep.loss)
        self.served_s += rep.wall_time_s - rep.ttt_wall_time_s
        self.ttt_s += rep.ttt_wall_time_s
        self.updates += rep.ttt_updates
        self.skipped += rep.ttt_skipped_updates
        self.tokens_trained += rep.ttt_tokens_trained

    def evaluate(self, tokens_after_shift: int, heldout) -> None:
        loss = heldout_loss(self.engine, *heldout)
        self.curve.append(
            dict(tokens_after_shift=tokens_after_shift, loss=loss, updates=self.updates, ttt_s=self.ttt_s)
        )

    def result(self) -> dict:
        return dict(
            frequency_tokens=self.frequency_tokens,
            chunk_tokens=self.chunk_tokens,
            heldout_curve=self.curve,
            final_heldout_loss=self.curve[-1]["loss"],
            online_loss_after_shift=float(np.mean(self.online)),
            updates=self.updates,
            skipped_updates=self.skipped,
            tokens_trained=self.tokens_trained,
            ttt_wall_s=self.ttt_s,
            serving_wall_s=self.served_s,
            ttt_overhead=self.ttt_s / self.served_s,
            ttt_s_per_token_trained=self.ttt_s / self.tokens_trained if self.tokens_trained else float("nan"),
        )


def run_settings(args: Args, model: mr.MoETransformer, heldout) -> dict:
    """Serve lead-in prose, then code, under every schedule in `SETTINGS`, in lockstep.

    The runtimes share the (frozen) model and take turns interval by interval, so that load from other processes
    on the machine falls on every setting alike.
    """
    schedule = mr.DomainSchedule.shift("prose", "code", args.lead_in_tokens)
    runs = []
    for name, (freq, chunk) in SETTINGS.items():
        engine = mr.TTTEngine(mr.TTTConfig(method=args.method))
        rt = mr.MoERuntime(model.cfg, model=model, schedule=schedule, split="test", seed=args.seed, ttt=engine)
        rt.apply(mr.ControlAction(ttt_frequency_tokens=freq, ttt_chunk_tokens=chunk))
        runs.append(SettingRun(name, freq, chunk, engine, rt))
    for _ in range(args.lead_in_tokens // args.interval_tokens):
        for run in runs:
            run.step(args.interval_tokens, after_shift=False)
    for run in runs:
        run.evaluate(0, heldout)
    for done in range(args.eval_every_tokens, args.adapt_tokens + 1, args.eval_every_tokens):
        for _ in range(args.eval_every_tokens // args.interval_tokens):
            for run in runs:
                run.step(args.interval_tokens, after_shift=True)
        for run in runs:
            run.evaluate(done, heldout)
    return {run.name: run.result() for run in runs}


def time_updates(args: Args, model: mr.MoETransformer, chunks: tuple[int, ...]) -> dict:
    """Median wall time of one update per chunk size and of a serving forward, timed interleaved.

    Other processes share the CPU; timing every size in each round, round after round, exposes them all to the
    same load, so the ratios hold even when the absolute times drift.
    """
    cfg = model.cfg
    engine = mr.TTTEngine(mr.TTTConfig(method=args.method))
    engine.attach(model)
    data = mr.load_corpus("code").splits["test"][: max(chunks) + 1]
    engine.observe(data[:-1], data[1:])
    batch = args.interval_tokens // cfg.seq_len
    idx = torch.from_numpy(data[: batch * cfg.seq_len].astype(np.int64)).view(batch, cfg.seq_len)
    times: dict[str, list[float]] = {"forward_base": [], "forward_adapted": [], **{str(c): [] for c in chunks}}
    for _ in range(args.timing_rounds):
        for c in chunks:
            engine.set_schedule(c, c)
            times[str(c)].append(engine.update().wall_time_s)
        for name, adapted in (("forward_base", False), ("forward_adapted", True)):
            t = time.perf_counter()
            with torch.inference_mode():
                (engine._adapted_forward(idx, idx, record=False) if adapted else model(idx, idx))
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return dict(
        forward_ms_per_interval=med["forward_base"] * 1e3,
        adapted_forward_ms_per_interval=med["forward_adapted"] * 1e3,
        update_ms={c: med[str(c)] * 1e3 for c in chunks},
        us_per_token_trained={c: med[str(c)] / c * 1e6 for c in chunks},
        rounds=args.timing_rounds,
    )


def ttt_time_to_loss(result: dict, target: float, timing: dict) -> dict:
    """TTT wall time (s) spent until the held-out curve first reaches `target`: measured in the run, and as the
    update count so far times the interleaved median update cost."""
    for point in result["heldout_curve"]:
        if point["loss"] <= target:
            return dict(
                run_s=point["ttt_s"],
                interleaved_s=point["updates"] * timing["update_ms"][result["chunk_tokens"]] / 1e3,
                tokens_after_shift=point["tokens_after_shift"],
            )
    return dict(run_s=float("nan"), interleaved_s=float("nan"), tokens_after_shift=None)


def plot(results: dict, timing: dict, path: pathlib.Path, title: str) -> None:
    """Left: held-out loss vs code tokens after the shift; right: TTT wall time per token trained by chunk size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw=dict(width_ratios=[1.6, 1]))
    for name, r in results.items():
        t = [p["tokens_after_shift"] for p in r["heldout_curve"]]
        schedule = f"every {r['frequency_tokens']} on {r['chunk_tokens']}" if r["frequency_tokens"] else "TTT off"
        label = f"{name} ({schedule}): overhead {r['interleaved']['overhead']:.0%}"
        ax[0].plot(t, [p["loss"] for p in r["heldout_curve"]], marker="o", ms=3, label=label)
    ax[0].set_xlabel("code tokens served after the prose -> code shift")
    ax[0].set_ylabel("held-out code loss (nats/byte)")
    ax[0].set_title("held-out loss (same tokens for every setting)")
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    chunks = list(timing["us_per_token_trained"])
    ax[1].bar([str(c) for c in chunks], [timing["us_per_token_trained"][c] for c in chunks], color="tab:gray")
    for i, c in enumerate(chunks):
        ax[1].annotate(
            f"{timing['update_ms'][c]:.0f} ms/update",
            (i, timing["us_per_token_trained"][c]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax[1].set_xlabel("chunk (tokens per update)")
    ax[1].set_ylabel("TTT wall time per token trained (us)")
    ax[1].set_title("cost per token trained (interleaved medians)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def interval_cost(timing: dict, freq: int, chunk: int, interval_tokens: int) -> dict:
    """Mean TTT cost of one control interval under a schedule, from the interleaved timings."""
    if not freq:
        return dict(ttt_ms_per_interval=0.0, overhead=0.0, worst_interval_ms=timing["forward_ms_per_interval"])
    fwd = timing["forward_ms_per_interval"]
    ttt_ms = timing["update_ms"][chunk] * interval_tokens / freq + timing["adapted_forward_ms_per_interval"] - fwd
    return dict(
        ttt_ms_per_interval=ttt_ms,
        overhead=ttt_ms / fwd,
        worst_interval_ms=timing["adapted_forward_ms_per_interval"] + timing["update_ms"][chunk],
    )


if __name__ == "__main__":
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = mr.MoEConfig.preset(args.preset)
    model = mr.MoETransformer(cfg) if args.random_init else mr.load_or_pretrain(cfg)
    heldout = heldout_batch(cfg, args.heldout_tokens)
    start = time.perf_counter()
    results = run_settings(args, model, heldout)
    timing = time_updates(args, model, tuple(sorted({c for f, c in SETTINGS.values() if f})))
    for name, (f, c) in SETTINGS.items():
        results[name]["interleaved"] = interval_cost(timing, f, c, args.interval_tokens)
    small, large = results["frequent-small"], results["infrequent-large"]
    us = timing["us_per_token_trained"]
    lact_ratio = us[small["chunk_tokens"]] / us[large["chunk_tokens"]]
    lact_ratio_run = small["ttt_s_per_token_trained"] / large["ttt_s_per_token_trained"]
    target = max(small["final_heldout_loss"], large["final_heldout_loss"])
    time_to_target = {n: ttt_time_to_loss(results[n], target, timing) for n in ("frequent-small", "infrequent-large")}

    print(
        f"{args.preset} preset, method {args.method}, {args.threads} threads, measured; held-out: "
        f"{args.heldout_tokens} code tokens (validation split), scored after each {args.eval_every_tokens} tokens"
    )
    print(f"{'setting':<17} {'freq':>5} {'chunk':>5} {'updates':>7}  held-out loss at 0, {args.eval_every_tokens}, ...")
    for name, r in results.items():
        losses = " ".join(f"{p['loss']:.3f}" for p in r["heldout_curve"])
        print(f"{name:<17} {r['frequency_tokens']:>5} {r['chunk_tokens']:>5} {r['updates']:>7}  {losses}")
    print(
        f"{'setting':<17} {'online':>7} {'final':>7} {'TTT s':>6} {'serve s':>7} {'overhead':>8} "
        f"{'us/tok':>7} | {'ms/interval':>11} {'overhead':>8} {'worst ms':>8}"
    )
    for name, r in results.items():
        it = r["interleaved"]
        print(
            f"{name:<17} {r['online_loss_after_shift']:>7.3f} {r['final_heldout_loss']:>7.3f} {r['ttt_wall_s']:>6.2f} "
            f"{r['serving_wall_s']:>7.2f} {r['ttt_overhead']:>8.1%} {r['ttt_s_per_token_trained'] * 1e6:>7.1f} | "
            f"{it['ttt_ms_per_interval']:>11.1f} {it['overhead']:>8.1%} {it['worst_interval_ms']:>8.1f}"
        )
    print(
        "  (left: the curve runs, overhead = TTT / serving wall time; right: interleaved medians, per "
        f"{args.interval_tokens}-token interval, forward {timing['forward_ms_per_interval']:.1f} ms)"
    )
    print(
        "update cost (interleaved medians): "
        + ", ".join(f"{c} tokens {timing['update_ms'][c]:.1f} ms ({us[c]:.0f} us/token)" for c in timing["update_ms"])
    )
    print(
        f"LaCT ratio (TTT wall time per token trained, {small['chunk_tokens']}- / {large['chunk_tokens']}-token "
        f"chunks): {lact_ratio:.2f}x interleaved, {lact_ratio_run:.2f}x in the curve runs"
    )
    tt_small, tt_large = time_to_target["frequent-small"], time_to_target["infrequent-large"]
    print(
        f"TTT time to first reach held-out loss {target:.3f}: frequent-small {tt_small['interleaved_s']:.2f} s "
        f"({tt_small['run_s']:.2f} s in its run), infrequent-large {tt_large['interleaved_s']:.2f} s "
        f"({tt_large['run_s']:.2f} s in its run)"
    )
    out = pathlib.Path(args.out)
    host = device_facts()
    meta = dict(
        source="measured",
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device="cpu",
        machine=platform.machine(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        torch=torch.__version__,
        # the pretrained weights (and so the losses) depend on the CPU that pretrained them: name both
        cpu_model=host["cpu_model"],
        torch_cpu_capability=host["torch_cpu_capability"],
        weights=getattr(model, "provenance", None) or ("random init" if args.random_init else None),
        corpus_sha={d: mr.load_corpus(d).sha256[:12] for d in ("prose", "code")},
        model=cfg.to_dict(),
        ttt=dataclasses.asdict(mr.TTTConfig(method=args.method)),
        wall_s=time.perf_counter() - start,
    )
    summary = dict(
        lact_ratio=lact_ratio,
        lact_ratio_curve_runs=lact_ratio_run,
        common_loss=target,
        ttt_s_to_common_loss=time_to_target,
        timing=timing,
    )
    report = dict(args=dataclasses.asdict(args), meta=meta, summary=summary, settings=results)
    write_json_atomic(out, report)
    plot(
        results,
        timing,
        out.with_suffix(".png"),
        f"{args.preset}, {args.method}, measured on CPU ({args.threads} threads)",
    )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    off = results["off"]["final_heldout_loss"]
    print(
        f"post-shift loss: off {off:.3f}, frequent-small {small['final_heldout_loss']:.3f}, "
        f"infrequent-large {large['final_heldout_loss']:.3f}"
    )
