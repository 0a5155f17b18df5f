"""Tuning the grouped SwiGLU's block sizes: the candidates, a robust pick over several shapes, parallel compiling.

`benchmarks/moe_kernels.py --tune` drives this on a GPU. For each token count it times every candidate on every
(top-k, d_model) case of one (E, N) and keeps the candidate whose slowdown against each case's fastest candidate is
smallest in geometric mean (`pick_robust`): a table is keyed by E and N (as vLLM's), and by top-k where it was
tuned for one, so one entry serves several model widths (and top-k), and the entry to keep is the one that is never
far off, not the one that wins a single case by a little and loses another by a lot.

Compiling is most of a tuning run when it happens one candidate after another (seconds per kernel, per top-k, on
one CPU core). `precompile` first runs every candidate once in worker processes; they fill Triton's on-disk cache,
from which the timing process then loads each kernel in milliseconds.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.configs import (
    CONFIG_DIR,
    DTYPES,
    MoeKernelConfig,
    config_file_name,
    force_config,
    read_configs,
    write_configs,
)

logger = logging.getLogger(__name__)

# (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, (num_warps, num_stages), down GEMM's columns as a multiple
# of BLOCK_SIZE_N) choices per space. "quick" keeps the shapes that won on an H100 for bf16 (tiles of 128-256
# columns, K step 64, grouped launch order), with every row count so that few slots per expert still find a small
# tile; "full" is vLLM's usual sweep. Tiles of 64 rows or more (wgmma, compute-fed) also try the down GEMM at twice
# the columns (up to 256), which takes the same registers and shared memory as the gate/up tile and halves the
# activation bytes it loads per FLOP (`MoeKernelConfig.block_size_n_down`); smaller tiles serve few slots per
# expert, where the weights' bytes, which the column tile does not change, bound the time.
SPACES = {
    "quick": ((16, 32, 64, 128), (128, 256), (64,), (8,), ((4, 3), (8, 3), (8, 4)), (1, 2)),
    "full": ((16, 32, 64, 128), (64, 128, 256), (64, 128), (1, 8), ((4, 3), (4, 4), (8, 3), (8, 4)), (1, 2)),
}
_MAX_DOWN_BLOCK_N = 256  # the widest Hopper wgmma
_WIDE_DOWN_MIN_ROWS = 64
# Shared memory a launch keeps for itself beside the pipeline stages (barriers, the epilogue's scratch).
_SMEM_RESERVE_BYTES = 8 * 1024


def candidate_space(space: str, itemsize: int, smem_bytes: int) -> list[MoeKernelConfig]:
    """The candidates of `space` ("quick" or "full") for a GPU with `smem_bytes` of shared memory per block.

    The gate/up kernel holds one x tile and two weight tiles (gate, up) per pipeline stage, `(bm bk + 2 bk bn)
    itemsize` bytes. A candidate whose stages do not fit keeps as many as fit (so a GPU with less shared memory still
    gets every tile shape, less deeply pipelined); one where not even 2 fit is dropped, and so is one whose
    accumulators would spill registers (`fits_registers`). The down kernel's tile at twice the columns holds one
    activation tile and one weight tile of 2 bn columns a stage and one accumulator of bm x 2 bn: the same shared
    memory and accumulator registers. Compiled for sm_90, every such candidate of both spaces runs its down GEMM on
    wgmma without spills but one (64x128, K step 128, 4 warps: 72 bytes); it stays in
    the full space for its timing to judge.
    """
    if space not in SPACES:
        raise ValueError(f"tune space must be one of {sorted(SPACES)}, got {space!r}")
    out: dict[MoeKernelConfig, None] = {}  # ordered, without duplicates
    for bm, bn, bk, group, (warps, stages), down in itertools.product(*SPACES[space]):
        fit = (smem_bytes - _SMEM_RESERVE_BYTES) // ((bm * bk + 2 * bk * bn) * itemsize)
        if fit < 2 or not fits_registers(bm, bn, warps):
            continue
        if down > 1 and (bm < _WIDE_DOWN_MIN_ROWS or bn * down > _MAX_DOWN_BLOCK_N):
            continue
        out[MoeKernelConfig(bm, bn, bk, group, warps, min(stages, fit), None if down == 1 else bn * down)] = None
    return list(out)


def fits_registers(block_m: int, block_n: int, num_warps: int) -> bool:
    """Whether the gate/up kernel's two fp32 accumulators leave room in the registers a thread may hold.

    They take 2 bm bn / (32 warps) registers a thread. A thread may hold 255, and fewer with more than 8 warps (an
    SM's 65536 registers shared by the block's 32 x warps threads: 128 at 16 warps). Compiled for sm_90 (Triton 3.9's
    ptxas, no GPU needed), every candidate of the quick space with up to 128 of them and bm >= 64 (Hopper's wgmma,
    operands in shared memory) or up to 64 and bm < 64 (mma.sync, operands in registers) compiled without spills, and
    every one above spilled (160-2736 bytes of stack: 32x256 and 64x256 on 4 warps, 128x128 on 4, 128x256 on 8); at 16
    warps the line is half the 128 (64x256 and 128x128 without spills, 128x256 and 256x128 spilled ~500 bytes).
    Triton 3.6 (the H100 machine's) draws the same line by what counts, spill traffic in the K loop, with one
    exception: it parks 8 bytes on the stack in the wgmma tiles at 128 (64x256, 128x128 on 8 warps), stored before
    the loop and read in the epilogue; the tiles above the line reload 20-640 values every K step; and 16x256 on 4
    warps (mma.sync, 64 a thread), below the line, spills 64 bytes with 7 loads and stores in the loop (left in, for
    the timing to judge). The test that checks the line (`tests/kernels/test_kernel_compile.py`) compiles with the
    installed Triton and reads the loop from the SASS.
    """
    per_thread = 2 * block_m * block_n // (32 * num_warps)
    half_the_registers = 65536 // (32 * num_warps) // 2  # of an SM's 65536 shared by the block's threads
    return per_thread <= min(128 if block_m >= 64 else 64, half_the_registers)


def eligible(config: MoeKernelConfig, slots_per_expert: float) -> bool:
    """False for tiles that would be mostly padding: more than 4x the expected slots per expert (16 rows always)."""
    return config.block_size_m <= max(16.0, 4.0 * slots_per_expert)


@dataclass(frozen=True)
class Pick:
    """The outcome of `pick_robust`.

    Attributes:
        config: the chosen candidate.
        score: geometric mean over the cases of (its time / the fastest time); 1.0 means fastest everywhere.
        slowdowns: case -> its time / the fastest time.
        chosen_ms: case -> its time.
        best_ms: case -> the fastest time of any complete candidate.
        candidates: how many candidates had a time on every case.
    """

    config: MoeKernelConfig
    score: float
    slowdowns: dict[Hashable, float]
    chosen_ms: dict[Hashable, float]
    best_ms: dict[Hashable, float]
    candidates: int


def pick_robust(times: Mapping[MoeKernelConfig, Mapping[Hashable, float | None]]) -> Pick:
    """The candidate with the smallest geometric-mean slowdown over the cases.

    Args:
        times: candidate -> {case: milliseconds, or None where it could not run}. A candidate missing a case, or
            with a None or non-finite time, is left out (it cannot serve every case).

    Returns:
        `Pick`. Ties go to the smaller total time, then to the candidate listed first.

    Raises:
        ValueError: no candidate has a time on every case.
    """
    cases = sorted({case for per_case in times.values() for case in per_case}, key=repr)

    def usable(ms: float | None) -> bool:
        return ms is not None and math.isfinite(ms) and ms > 0

    complete = {cfg: t for cfg, t in times.items() if cases and all(usable(t.get(c)) for c in cases)}
    if not complete:
        raise ValueError(f"no candidate ran on every case ({len(times)} candidates, cases {cases})")
    best_ms = {c: min(t[c] for t in complete.values()) for c in cases}

    def score(t: Mapping[Hashable, float]) -> float:
        return math.exp(sum(math.log(t[c] / best_ms[c]) for c in cases) / len(cases))

    order = {cfg: i for i, cfg in enumerate(complete)}
    config = min(complete, key=lambda cfg: (score(complete[cfg]), sum(complete[cfg].values()), order[cfg]))
    chosen = complete[config]
    return Pick(
        config=config,
        score=score(chosen),
        slowdowns={c: chosen[c] / best_ms[c] for c in cases},
        chosen_ms={c: chosen[c] for c in cases},
        best_ms=best_ms,
        candidates=len(complete),
    )


@dataclass(frozen=True)
class Shape:
    """One (experts, top-k, d_model, widths) case to compile the candidates for."""

    num_experts: int
    top_k: int
    d_model: int
    widths: tuple[int, ...]


def _compile_chunk(config_entries: list[dict[str, int]], shapes: list[Shape], dtype: torch.dtype, device: str):
    """Worker: run each candidate once per shape on a few tokens, which compiles it.

    Returns [(entry, error or None, whether the error is the candidate's own)]. The candidate's own errors are
    Triton's (it does not compile, or needs more shared memory or registers than the GPU has); anything else (out
    of memory, a CUDA context that would not start, a bad shape) says nothing about the candidate.

    The sizes that vary with the batch are not specialised on (the kernels' `do_not_specialize`), so a run on 64
    tokens compiles the same variants that the timing on thousands of tokens will launch; where the default policy
    loads the weights through tensor descriptors for large passes (`kernels.swiglu.use_tma_weights`), each candidate
    also runs once with them, which compiles those variants too. The values do not matter
    for compiling: the inputs are zeros in the input dtype (only the expert ids must be valid), made one shape at a
    time, so a worker holds one shape's weights (1.8 GB for 64 experts of widths 256-2048 at d_model 4096, bf16).
    """
    from kernels import swiglu

    tma_variants = (False, True) if swiglu.use_tma_weights(torch.device(device), swiglu.TMA_MIN_SLOTS) else (False,)
    errors: dict[int, tuple[str, bool]] = {}
    for shape in shapes:
        x = w_up = w_down = None  # the previous shape's buffers go before the next are made
        try:
            total, num_tokens = sum(shape.widths), 64
            x = torch.zeros(num_tokens, shape.d_model, device=device, dtype=dtype)
            ids = torch.rand(num_tokens, shape.num_experts, device=device).argsort(dim=1)[:, : shape.top_k]
            weights = torch.zeros(num_tokens, shape.top_k, device=device, dtype=dtype)
            w_up = torch.zeros(shape.d_model, 2 * total, device=device, dtype=dtype)
            w_down = torch.zeros(total, shape.d_model, device=device, dtype=dtype)
        except Exception as exc:  # not the candidates' fault; they compile when first timed
            for i in range(len(config_entries)):
                errors.setdefault(i, (f"{type(exc).__name__}: {exc}"[:300], False))
            continue
        for i, entry in enumerate(config_entries):
            if i in errors:
                continue
            setting = swiglu.TMA_WEIGHTS
            try:
                with force_config(MoeKernelConfig.from_json(entry)), torch.inference_mode():
                    for swiglu.TMA_WEIGHTS in tma_variants:
                        swiglu.grouped_swiglu_triton(x, ids, weights, w_up, w_down, shape.widths)
            except Exception as exc:
                own = type(exc).__module__.startswith("triton")  # CompilationError, OutOfResources
                errors[i] = (f"{type(exc).__name__}: {exc}"[:300], own)
            finally:
                swiglu.TMA_WEIGHTS = setting
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return [(entry, *errors.get(i, (None, False))) for i, entry in enumerate(config_entries)]


def precompile(
    space: Sequence[MoeKernelConfig],
    shapes: Sequence[Shape],
    dtype: torch.dtype,
    device: str = "cuda",
    workers: int | None = None,
) -> dict[MoeKernelConfig, str]:
    """Compile every candidate for every shape, in `workers` processes (spawned; 1 or 0: in this process).

    Args:
        space: the candidates.
        shapes: the cases they will be timed on (each top-k compiles its own gate/up kernel).
        dtype: input dtype.
        device: "cuda" on a GPU; "cpu" runs the kernels in Triton's interpreter (tests).
        workers: processes; default min(8, CPU cores, candidates).

    Returns:
        candidate -> Triton's error, for the candidates that cannot run on this GPU (leave them out). A candidate
        that could not be precompiled for any other reason (a worker that died, out of memory) is not in it: a
        warning says why, and it compiles when first timed.
    """
    space, shapes = list(space), list(shapes)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = max(1, min(workers, len(space)))
    chunks = [space[i::workers] for i in range(workers)]
    results: list[tuple[dict[str, int], str | None, bool]] = []
    if workers == 1:
        results = _compile_chunk([c.to_json() for c in space], shapes, dtype, device)
    else:
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_compile_chunk, [c.to_json() for c in chunk], shapes, dtype, device) for chunk in chunks
            ]
            for fut, chunk in zip(futures, chunks):
                try:
                    results.extend(fut.result())
                except Exception as exc:  # a crashed worker: its candidates compile when first timed instead
                    results.extend(
                        (c.to_json(), f"worker failed: {type(exc).__name__}: {exc}"[:300], False) for c in chunk
                    )
    others = [(entry, err) for entry, err, own in results if err is not None and not own]
    if others:
        logger.warning(
            "%d of %d candidates not precompiled (%s); they compile when first timed",
            len(others),
            len(space),
            others[0][1],
        )
    return {MoeKernelConfig.from_json(entry): err for entry, err, own in results if err is not None and own}


def tables_from_report(report: Mapping) -> dict[str, dict[int, MoeKernelConfig]]:
    """The tables a tuning run wrote, rebuilt from its report (`benchmarks/moe_kernels.py --tune --out`).

    The report holds every pick (it is rewritten after each token count, so a run stopped at a time limit has what
    it tuned), and it is one file with a plain name: the device tool brings back at most 8 files from a call, named
    in letters, digits, '.', '_' and '-' alone, so the tables themselves (`E=8,N=2048,k=1,device_name=...json`) stay
    on the GPU machine and are rebuilt here from the report.

    Returns:
        file name (`kernels.configs.config_file_name`) -> {token count: config}, for each table the run wrote.

    Raises:
        ValueError: not a tuning report, a report from the CPU, or one whose picks do not give the files it says it
            wrote.
    """
    if not isinstance(report, Mapping) or report.get("benchmark") != "moe_kernels_tune":
        found = report.get("benchmark") if isinstance(report, Mapping) else type(report).__name__
        raise ValueError(f"not a tuning report (benchmark 'moe_kernels_tune'), got {found!r}")
    device = report.get("device")
    if not isinstance(device, str) or not device or device == "cpu" or any(c in device for c in "/\\"):
        raise ValueError(f"a tuning report names the GPU it ran on (no path separators), got device {device!r}")
    dtype_name = (report.get("args") or {}).get("dtype")
    if dtype_name not in DTYPES:
        raise ValueError(f"the report's args.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    out: dict[str, dict[int, MoeKernelConfig]] = {}
    for entry in (report.get("tune") or {}).get("tables") or []:
        try:
            num_experts, max_width = int(entry["experts"]), max(int(w) for w in entry["widths"])
            if num_experts < 1 or max_width < 1:
                raise ValueError(f"experts {num_experts} and widths up to {max_width} must be >= 1")
            tables: dict[int | None, dict[int, MoeKernelConfig]] = {}
            for pick in entry["picks"]:
                if "config" in pick:  # the others are token counts no candidate ran on everywhere
                    top_k = None if pick["top_k"] is None else int(pick["top_k"])
                    tokens = int(pick["tokens"])
                    if tokens < 1 or not (top_k is None or 1 <= top_k <= num_experts):
                        raise ValueError(f"tokens {tokens} (>= 1) or top_k {top_k} (1..{num_experts} or null)")
                    tables.setdefault(top_k, {})[tokens] = MoeKernelConfig.from_json(pick["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad table entry in the tuning report: {type(exc).__name__}: {exc}") from exc
        names = {config_file_name(num_experts, max_width, device, DTYPES[dtype_name], k): t
                 for k, t in tables.items()}  # fmt: skip
        written = set(entry.get("written", names))
        if set(names) != written:
            raise ValueError(
                f"the report's picks give the tables {sorted(names)}, but it says it wrote {sorted(written)}"
            )
        out.update(names)
    return out


def read_report(path: str | Path) -> tuple[dict, dict[str, dict[int, MoeKernelConfig]]]:
    """(the tuning report at `path`, its tables as `tables_from_report` gives them); a `ValueError` naming the file
    for one that cannot be read, is not JSON, is not a tuning report or has no table."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the tuning report {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"the tuning report {path} is not JSON: {exc}") from exc
    try:
        tables = tables_from_report(report)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not tables:
        raise ValueError(f"{path}: the tuning report has no tuned tables (no token count finished)")
    return report, tables


def install_report(path: str | Path, config_dir: str | Path = CONFIG_DIR) -> list[Path]:
    """Write the tables of the tuning report at `path` into `config_dir` (each atomically); the paths written."""
    _, tables = read_report(path)
    return _write_tables(tables, Path(config_dir))


def _write_tables(tables: dict[str, dict[int, MoeKernelConfig]], config_dir: Path) -> list[Path]:
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, table in sorted(tables.items()):
        write_configs(config_dir / name, table)
    return [config_dir / name for name in sorted(tables)]


def main(argv: list[str] | None = None) -> None:
    """`python -m kernels.configs.tuning REPORT...`: install the tables of tuning reports (see `install_report`);
    every report is checked before any table is written, and a table named by several reports holds the entries of
    all of them (the later report's where both tuned a token count). A table already installed keeps the token
    counts no report tuned (a retune of a few token counts replaces only those), unless --replace."""
    parser = argparse.ArgumentParser(
        prog="python -m kernels.configs.tuning",
        description="Install the tuned tables of `benchmarks/moe_kernels.py --tune` reports (their --out JSON) into "
        "kernels/configs/, rebuilt from the picks they list.",
    )
    parser.add_argument("reports", nargs="+", help="tuning report(s), e.g. the tune.json a device call brought back")
    parser.add_argument(
        "--config-dir", default=str(CONFIG_DIR), help="where to write the tables (default: %(default)s)"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="write only the reports' entries; without it, an installed table keeps the token counts they did not "
        "tune (use after a kernel change that makes the installed picks stale)",
    )
    args = parser.parse_args(argv)
    try:
        loaded = [(path, *read_report(path)) for path in args.reports]
    except ValueError as exc:
        parser.error(str(exc))
    # One table file may come from several reports (a retune of a few token counts after a full run): merged entry
    # by entry, a later report's pick replacing an earlier one's at the same token count.
    merged: dict[str, dict[int, MoeKernelConfig]] = {}
    for path, report, tables in loaded:
        partial = " (partial: the run stopped before it finished)" if report.get("partial") else ""
        print(f"{path}{partial}: {len(tables)} tables")
        for name, table in tables.items():
            merged.setdefault(name, {}).update(table)
    kept: dict[str, list[int]] = {}
    if not args.replace:
        for name, table in merged.items():
            installed_path = Path(args.config_dir) / name
            if not installed_path.is_file():
                continue
            try:
                installed = read_configs(installed_path)
            except ValueError as exc:
                parser.error(f"{exc}; give --replace to write the reports' entries alone")
            kept[name] = sorted(set(installed) - set(table))
            merged[name] = {**installed, **table}
    try:
        written = _write_tables(merged, Path(args.config_dir))
    except OSError as exc:  # e.g. --config-dir names a file
        parser.error(f"cannot write the tables into {args.config_dir}: {exc.strerror or exc}")
    print(f"wrote {len(written)} tables to {args.config_dir}")
    for table_path in written:
        old = kept.get(table_path.name)
        note = f" (kept from the installed table: {old})" if old else ""
        print(f"  {table_path.name}: token counts {sorted(merged[table_path.name])}{note}")


__all__ = [
    "SPACES",
    "Pick",
    "Shape",
    "candidate_space",
    "eligible",
    "fits_registers",
    "install_report",
    "pick_robust",
    "precompile",
    "read_report",
    "tables_from_report",
]

if __name__ == "__main__":
    main()
