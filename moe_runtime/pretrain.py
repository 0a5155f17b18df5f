"""Pretrain a preset on the prose corpus, cached by config and corpus hash, resumable.

    python -m moe_runtime --preset default

AdamW with linear warm-up and cosine decay, next-token loss plus the Switch load-balancing loss. Progress shows in a
tqdm bar and TensorBoard (`<cache>/tb/<name>`); the checkpoint goes atomically to the cache, and a `.partial` file
beside it lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import numbers
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from moe_runtime.checkpoint import (
    CheckpointError,
    atomic_save,
    default_cache_dir,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from moe_runtime.config import MoEConfig
from moe_runtime.model import MoETransformer
from moe_runtime.streams import load_corpus

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Pretraining settings.

    Attributes:
        steps: optimiser steps (batches of `MoEConfig.batch_size` sequences of `seq_len` tokens).
        lr: peak learning rate (AdamW; linear warm-up, then cosine decay to a tenth of it).
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay.
        corpus: domain or path the model learns (`prose` by default; the shift meets `code`). The reported losses
            are on the prose and code validation splits whatever the corpus.
        eval_tokens: validation tokens per domain for the reported losses.
        checkpoint_every: steps between resumable `.partial` saves.
        cache_dir: where checkpoints live (default `$MOE_RL_CACHE` or `~/.cache/moe-energy-rl`).
        threads: torch CPU threads (0 keeps torch's default).
        progress: show a progress bar.
    """

    steps: int = 900  # ~4.5 min on 2 CPU cores (3.5 steps/s measured); the issue budget is 5 min
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05
    corpus: str = "prose"
    eval_tokens: int = 32768
    checkpoint_every: int = 200
    cache_dir: str | None = None
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        rules = {  # field: (allowed, what is allowed, an integer)
            "steps": (lambda v: v >= 1, "an integer >= 1", True),
            "warmup_steps": (lambda v: v >= 0, "an integer >= 0", True),
            "lr": (lambda v: 0 < v < math.inf, "a positive, finite rate", False),
            "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0", False),
            "eval_tokens": (lambda v: v >= 1, "an integer >= 1", True),
            "checkpoint_every": (lambda v: v >= 1, "an integer >= 1 (steps between saves)", True),
            "threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)", True),
        }
        for name, (allowed, what, integer) in rules.items():
            value = getattr(self, name)
            kinds = numbers.Integral if integer else numbers.Real  # 2.5 steps, or inf, would fail after training
            if isinstance(value, bool) or not isinstance(value, kinds) or not allowed(value):
                raise ValueError(f"PretrainConfig.{name} must be {what}, got {value!r}")

    def key(self) -> str:
        keep = {
            k: v for k, v in dataclasses.asdict(self).items() if k in ("steps", "lr", "warmup_steps", "weight_decay")
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:8]


def checkpoint_path(cfg: MoEConfig, pcfg: PretrainConfig) -> pathlib.Path:
    """Where the pretrained checkpoint for (model, corpus, schedule) lives."""
    cache = pathlib.Path(pcfg.cache_dir) if pcfg.cache_dir else default_cache_dir()
    corpus_sha = load_corpus(pcfg.corpus).sha256[:12]
    return cache / f"{cfg.preset_name}-{cfg.model_key()}-{corpus_sha}-{pcfg.key()}.pt"


def _batch(data: np.ndarray, batch: int, seq: int, rng: np.random.Generator):
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    idx = starts[:, None] + np.arange(seq + 1)[None, :]
    chunk = torch.from_numpy(data[idx].astype(np.int64))  # (B, S + 1)
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate_loss(model: MoETransformer, source: str, split: str = "validation", tokens: int = 32768) -> float:
    """Mean next-token loss (nats) of `model` on the first `tokens` tokens of a corpus split."""
    cfg = model.cfg
    data = load_corpus(source).splits[split]
    seq = cfg.seq_len
    n_seq = max(1, min(tokens, len(data) - 1) // seq)
    x = torch.from_numpy(data[: n_seq * seq].astype(np.int64)).view(n_seq, seq)
    y = torch.from_numpy(data[1 : n_seq * seq + 1].astype(np.int64)).view(n_seq, seq)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for i in range(0, n_seq, 32):
        out = model(x[i : i + 32].to(device), y[i : i + 32].to(device))
        total += float(out.loss) * x[i : i + 32].numel()
    model.train(was_training)
    return total / (n_seq * seq)


def unigram_loss(source: str = "prose", train_source: str = "prose") -> float:
    """Cross-entropy (nats) of the validation split under the training split's byte frequencies (add-one)."""
    train = np.bincount(load_corpus(train_source).splits["train"], minlength=256) + 1.0
    p = train / train.sum()
    val = load_corpus(source).splits["validation"]
    return float(-np.log(p[val]).mean())


def pretrain(cfg: MoEConfig, pcfg: PretrainConfig | None = None) -> dict:
    """Train `cfg` on `pcfg.corpus` and write the checkpoint to the cache.

    Returns:
        {"path", "val_loss_prose", "val_loss_code", "unigram_loss_prose", "steps", "resumed_from"}.
    """
    pcfg = pcfg or PretrainConfig()
    if pcfg.threads:
        torch.set_num_threads(pcfg.threads)
    path = checkpoint_path(cfg, pcfg)
    partial = path.with_suffix(".partial")
    corpus = load_corpus(pcfg.corpus)
    data = corpus.splits["train"]
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.resolved_device())
    model = MoETransformer(cfg).to(device)  # fp32 master weights; bf16 autocast on CUDA
    opt = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay, betas=(0.9, 0.95))
    rng = np.random.default_rng(cfg.seed)
    step = 0
    if partial.exists():
        try:
            state = torch.load(partial, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            rng.bit_generator.state = state["rng"]
            step = state["step"]
            log.info("resuming pretraining from %s at step %d", partial, step)
        except Exception as exc:
            raise CheckpointError(f"resume file {str(partial)!r} is corrupt ({exc}); delete it to start over") from exc
    resumed_from = step

    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    writer = SummaryWriter(str(path.parent / "tb" / path.stem))
    model.train()
    bar = tqdm(total=pcfg.steps, initial=step, desc=f"pretrain {cfg.preset_name}", disable=not pcfg.progress)
    while step < pcfg.steps:
        lr = pcfg.lr * min(1.0, (step + 1) / max(1, pcfg.warmup_steps))
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / pcfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = _batch(data, cfg.batch_size, cfg.seq_len, rng)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(x.to(device), y.to(device))
        loss = out.loss + cfg.aux_loss_coef * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_value = out.loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        writer.add_scalar("losses/train", loss_value, step)
        writer.add_scalar("losses/aux", out.aux_loss.item(), step)
        writer.add_scalar("charts/lr", lr, step)
        if step % pcfg.checkpoint_every == 0 and step < pcfg.steps:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng.bit_generator.state,
                    "step": step,
                },
                partial,
            )
    bar.close()
    model.eval()
    result = {
        "val_loss_prose": evaluate_loss(model, "prose", tokens=pcfg.eval_tokens),
        "val_loss_code": evaluate_loss(model, "code", tokens=pcfg.eval_tokens),
        "unigram_loss_prose": unigram_loss("prose"),
        "steps": step,
        "resumed_from": resumed_from,
    }
    for k in ("val_loss_prose", "val_loss_code"):
        writer.add_scalar(f"losses/{k}", result[k], step)
    writer.close()
    save_checkpoint(path, model, corpus.sha256, extra={"pretrain": {**dataclasses.asdict(pcfg), **result}})
    partial.unlink(missing_ok=True)
    result["path"] = str(path)
    return result


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
    """An inter-process lock on `lock_path` (POSIX `flock`; none where `fcntl` is missing), so that processes
    started together on a cold cache (the workers of a `SubprocVecEnv`, two evaluations) pretrain a model once:
    the others wait, then load what the first one saved."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent pretraining repeats the work but saves atomically
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish pretraining (%s)", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_pretrained(cfg: MoEConfig, pcfg: PretrainConfig | None = None) -> pathlib.Path:
    """The cached checkpoint of `cfg` pretrained by `pcfg`, pretraining it first when none is cached (once, however
    many processes ask at the same time). `pcfg.progress` decides whether that pretraining shows a bar."""
    pcfg = pcfg or PretrainConfig()
    path = checkpoint_path(cfg, pcfg)
    if path.exists():
        return path
    with _exclusive(path.with_suffix(".lock")):
        if not path.exists():  # another process may have saved it while this one waited
            log.info("no cached checkpoint at %s; pretraining %s", path, cfg.preset_name)
            pretrain(cfg, pcfg)
    return path


def load_or_pretrain(cfg: MoEConfig, pcfg: PretrainConfig | None = None) -> MoETransformer:
    """The cached pretrained model for `cfg`, pretraining it first (once) when none is cached."""
    path = ensure_pretrained(cfg, pcfg)
    try:
        return load_model(path, cfg)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; delete it, and the next run pretrains the model again") from exc


def _field_help(cls) -> dict[str, str]:
    """Each field's line from the class docstring's Attributes section (with its continuation lines), for --help."""
    helps, name = {}, None
    for line in (cls.__doc__ or "").split("Attributes:")[-1].splitlines():
        head, sep, text = line.strip().partition(": ")
        if sep and head in {f.name for f in dataclasses.fields(cls)}:
            name, helps[head] = head, text
        elif name and line.strip():
            helps[name] += " " + line.strip()
    return helps


_FIELD_HELP = _field_help(PretrainConfig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime",
        description=__doc__.split("\n")[0],
        epilog="Then serve it across a prose -> code shift: python -m moe_runtime.demo --preset PRESET (the demo "
        "serves the model pretrained with the default settings above, pretraining it first if it is not cached)",
    )
    parser.add_argument("--preset", default="default", help="MoEConfig preset: tiny, default or gpu")
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "progress":
            continue
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(f.default) if f.default is not None else str,
            default=f.default,
            help=_FIELD_HELP[f.name] + ("" if f.default is None else f" (default: {f.default})"),
        )
    parser.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # bad values are one-line errors before any training
        cfg = MoEConfig.preset(args.preset)
        pcfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
        path = checkpoint_path(cfg, pcfg)
    except (ValueError, FileNotFoundError) as exc:  # FileNotFoundError: a --corpus path that does not exist
        parser.error(str(exc))
    if path.parent.exists() and not path.parent.is_dir():
        parser.error(f"--cache-dir {str(path.parent)!r} is a file, not a folder")
    try:
        if path.exists() and not args.force:
            print(f"cached checkpoint exists: {path} (use --force to retrain)")
            saved = read_checkpoint(path).get("pretrain", {})
            result = {k: saved.get(k) for k in ("val_loss_prose", "val_loss_code", "unigram_loss_prose")}
        else:
            result = pretrain(cfg, pcfg)
    except CheckpointError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}{'' if args.force else '; --force retrains'}\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
