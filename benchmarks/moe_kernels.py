"""Benchmark of the MoE kernels on a GPU: the Triton path against the PyTorch per-expert loop, PyTorch's grouped
matrix multiply (where the installed PyTorch has one), and a dense GEMM of the same FLOPs, with the time floor
from the GPU's peak FLOP/s and memory bandwidth.

    python benchmarks/moe_kernels.py                        # the full grid, JSON to results/moe_kernels/
    python benchmarks/moe_kernels.py --experts 16 --top-k 2 --tokens 2048 --d-model 1024
    python benchmarks/moe_kernels.py --tune --experts 8 --top-k 2 --d-model 1024 --base-width 2048
                                                            # block sizes -> kernels/configs/E=8,N=4096,...json
                                                            # (and E=8,N=4096,k=2,...json)

Grid: experts E in {8, 16, 64}, top-k in {1, 2, 8}, tokens 1k-64k, d_model {1024, 4096}, bf16; expert widths are
`base_width` times the runtime's ratios (0.25x-2x), tiled to E experts. Each case times, by CUDA events with warm-up
and the median of many repeats (`triton.testing.do_bench`): the expert computation (`expert_swiglu`) on the Triton
path (and the host's time to enqueue it, `swiglu_triton_host_ms`, and the rate at which its programs load their
tiles, `operand_bytes_per_s_graph`, against the L2 read rate `benchmarks/_l2_probe.py` measures once a run), the
reference per-expert loop and `torch._grouped_mm` (weights zero-padded to the widest expert), routing on both paths,
and the dense GEMM; the Triton path and the dense GEMM are timed turn about (`--pair-rounds`), since a power-capped
GPU's clocks move over a run and the fraction of dense is their ratio. FLOPs count 6 d f per slot on expert e (gate,
up, down); the floor is max(FLOPs / peak FLOP/s, bytes / bandwidth) with bytes = x, the used experts' weights and
the output once. Each row records the block sizes the Triton path ran with (`config`) and where they came from
(`config_source`: a tuned table and its entry, or `default`), and, from the profiler, the GPU time of each kernel of
the call (`kernel_ms`) and each GEMM launch's own fraction of dense (`gemm_fraction_of_dense`: which launch holds a
miss back).

Targets (issue 6): the Triton path reaches >= 60% of the dense GEMM's TFLOP/s at 8k tokens and more, and is
>= 1.5x faster than the per-expert loop at 2k tokens or fewer with 16 experts or more. Each missed dense target
says why (`judge`): `roofline` (even at the datasheet peaks no kernel could: the experts' weights take longer to
read than the dense GEMM takes), `operands` (the bytes these kernels' tiles load would take too long even at the
measured L2 read rate: they need more reuse per SM), `launch` (the CUDA-graph replay of the call meets it, and the
eager call is 5% or more slower: host-bound) or `kernel` (the tiles' bytes move slower than L2 allows).

    python benchmarks/moe_kernels.py --summarise results/gpu/kernels/2026-11-24/grid.json   # re-judge, no GPU

Without CUDA the script says so, times the reference path on a small case on the CPU, writes the JSON, exits 0.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import statistics
import time
from pathlib import Path

import _moe_args
import torch
import torch.nn.functional as F
from _cli import write_json_atomic
from _moe_args import POLICY_SETTINGS, Args
from _moe_targets import judge, launches, operand_bytes, paired_figures, print_summary, read_grid, summarise
from _timing import bench_ms, graph_ms, host_ms, kernel_ms, paired_ms

from kernels import configs, swiglu
from kernels.configs import tuning
from kernels.routing import fused_route_reference, fused_route_triton
from kernels.swiglu import grouped_swiglu_reference, grouped_swiglu_triton, tokens_per_pass

WIDTH_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 2.0)  # as moe_runtime.config.EXPERT_WIDTH_RATIOS


def parse_args(argv: list[str] | None = None) -> Args:
    """Args from the command line (`benchmarks/_moe_args.py`); a bad value exits with a message naming it."""
    return _moe_args.parse_args(argv, description=__doc__.split("\n\n")[0])


def expert_widths(num_experts: int, base_width: int) -> tuple[int, ...]:
    """base_width x the runtime's ratios, tiled to `num_experts` experts."""
    return tuple(max(16, round(base_width * WIDTH_RATIOS[e % len(WIDTH_RATIOS)])) for e in range(num_experts))


def peak_figures(device_name: str) -> tuple[str, float, float] | None:
    """(spec name, dense bf16 FLOP/s, memory bytes/s) from `telemetry`'s GPU table, or None for a GPU not in it.

    The CUDA name is matched by model substring ("NVIDIA H100 80GB HBM3" -> H100, the SXM part; a PCIe card would
    get the SXM figures, so the spec name is written beside them).
    """
    from telemetry import get_gpu_spec

    for model in ("H200", "H100", "A100", "V100", "L4"):
        if model in device_name:
            spec = get_gpu_spec(model)
            return spec.name, spec.peak_bf16_flops, spec.mem_bandwidth_bps
    return None


def driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except Exception as exc:  # NVML absent or failing: the figure is only provenance
        return f"unknown ({type(exc).__name__})"


def make_case(num_tokens: int, num_experts: int, top_k: int, d_model: int, widths, dtype, device, gen):
    """Inputs of one case: x [T, d], gate logits [T, E], weights in the runtime's concatenated layout."""
    total = sum(widths)
    x = torch.randn(num_tokens, d_model, device=device, generator=gen).to(dtype)
    logits = torch.randn(num_tokens, num_experts, device=device, generator=gen)
    w_up = (torch.randn(d_model, 2 * total, device=device, generator=gen) / d_model**0.5).to(dtype)
    w_down = (torch.randn(total, d_model, device=device, generator=gen) / 32.0).to(dtype)
    r = fused_route_reference(logits, None, top_k)
    return x, logits, r.topk_ids, r.topk_weights.to(dtype), w_up, w_down


def padded_expert_weights(w_up, w_down, widths):
    """[E, d, 2 f_max] gate|up and [E, f_max, d] down, zero-padded to the widest expert, for torch._grouped_mm."""
    f_max, d_model = max(widths), w_up.shape[0]
    up3 = w_up.new_zeros(len(widths), d_model, 2 * f_max)
    down3 = w_down.new_zeros(len(widths), f_max, d_model)
    off = 0
    for e, f in enumerate(widths):
        up3[e, :, :f] = w_up[:, 2 * off : 2 * off + f]
        up3[e, :, f_max : f_max + f] = w_up[:, 2 * off + f : 2 * off + 2 * f]
        down3[e, :f] = w_down[off : off + f]
        off += f
    return up3, down3


def grouped_mm_swiglu(x, topk_ids, topk_weights, up3, down3) -> torch.Tensor:
    """The expert computation with PyTorch's grouped GEMM over the sorted slots."""
    top_k, f_max = topk_ids.shape[1], down3.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token_idx = order // top_k
    ends = torch.cumsum(torch.bincount(flat, minlength=up3.shape[0]), 0).to(torch.int32)
    h = torch._grouped_mm(x[token_idx], up3, offs=ends)  # (S, 2 f_max)
    a = F.silu(h[:, :f_max]) * h[:, f_max:]
    y = torch._grouped_mm(a, down3, offs=ends) * topk_weights.reshape(-1)[order].unsqueeze(-1)  # (S, d)
    return torch.zeros_like(x).index_add_(0, token_idx, y)


def dense_gemm(rows: int, d_model: int, flops: float, dtype) -> tuple[list[int], object]:
    """A dense [rows, d] @ [d, n] GEMM with n chosen (a multiple of 64) so it does about `flops`: (shape, call)."""
    n = max(64, round(flops / (2.0 * rows * d_model) / 64) * 64)
    a = torch.randn(rows, d_model, device="cuda", dtype=dtype)
    b = torch.randn(d_model, n, device="cuda", dtype=dtype)
    return [rows, d_model, n], lambda: a @ b


def fraction_range(row: dict) -> str:
    """'55-58%': the least and most of a row's rounds' fractions of dense."""
    low, high = row["fraction_of_dense_range"]
    return f"{low:.0%}-{high:.0%}"


def segment_order(args: Args, num_experts: int) -> tuple[int, ...] | None:
    """The Triton path's `segment_order` for --segment-order: None (its widest-first default) or expert order."""
    return None if args.segment_order == "widest-first" else tuple(range(num_experts))


def time_config(args: Args, cfg: configs.MoeKernelConfig, inputs: tuple, widths: tuple[int, ...]) -> float | None:
    """Milliseconds of the Triton expert path with `cfg` forced, from CUDA-graph replays (the kernels' time without
    launch gaps, as vLLM's tuner times), or None (reason printed) if it cannot launch or be captured."""
    x, ids, w, w_up, w_down = inputs
    order = segment_order(args, len(widths))
    fn = lambda: grouped_swiglu_triton(x, ids, w, w_up, w_down, widths, segment_order=order)  # noqa: E731
    with configs.force_config(cfg), torch.inference_mode():
        try:
            ms, err = graph_ms(fn, args)
        except Exception as exc:  # e.g. out of shared memory on this GPU
            torch.cuda.synchronize()
            ms, err = None, f"{type(exc).__name__}: {exc}"
    if ms is None:  # skipped, and said why: an eager time beside graph times would be charged the launch gaps
        print(f"  skip {cfg}: {err[:160]}")
    return ms


def run_case(args: Args, num_tokens, num_experts, top_k, d_model, dtype, peaks, gen, l2_bytes_per_s=None) -> dict:
    """Time one case on every path; `peaks` is (FLOP/s, bytes/s) or None, `l2_bytes_per_s` the run's L2 read rate
    (`_l2_probe`) or None. Returns the JSON row."""
    widths = expert_widths(num_experts, args.base_width)
    x, logits, ids, w, w_up, w_down = make_case(num_tokens, num_experts, top_k, d_model, widths, dtype, "cuda", gen)
    counts = torch.bincount(ids.reshape(-1), minlength=num_experts).tolist()
    flops = sum(6.0 * d_model * n * f for n, f in zip(counts, widths))
    itemsize = x.element_size()
    used_weight_elems = sum(3 * d_model * f for n, f in zip(counts, widths) if n)
    bytes_min = (2 * num_tokens * d_model + used_weight_elems) * itemsize
    row = dict(tokens=num_tokens, experts=num_experts, top_k=top_k, d_model=d_model, widths=list(widths),
               dtype=str(dtype).removeprefix("torch."), flops=flops, bytes_min=bytes_min)  # fmt: skip
    # The tiles the Triton path runs with, and whether a tuned table or the heuristic default gave them.
    cfg, row["config_source"] = configs.config_source(
        tokens_per_pass(num_tokens, top_k), num_experts, top_k, max(widths), dtype, "cuda"
    )
    row["config"] = cfg.to_json()

    row["segment_order"] = args.segment_order
    row["tma_weights"] = swiglu.use_tma_weights(torch.device("cuda"), tokens_per_pass(num_tokens, top_k) * top_k)
    row["device_descriptors"] = swiglu.DEVICE_DESCRIPTORS and row["tma_weights"]
    row["atomic_top2"] = swiglu.use_atomic_top2(torch.device("cuda"), top_k)
    order = segment_order(args, num_experts)
    triton_fn = lambda: grouped_swiglu_triton(x, ids, w, w_up, w_down, widths, segment_order=order)  # noqa: E731

    with torch.inference_mode():
        row["dense_shape"], dense_fn = dense_gemm(num_tokens * top_k, d_model, flops, dtype)
        rounds = paired_ms({"triton": triton_fn, "dense": dense_fn}, args, args.pair_rounds)
        del dense_fn  # its operands, before the other paths allocate
        row.update(paired_figures(flops, 2.0 * math.prod(row["dense_shape"]), rounds["triton"], rounds["dense"]))
        row["swiglu_triton_host_ms"] = host_ms(triton_fn)
        row["swiglu_loop_ms"] = bench_ms(lambda: grouped_swiglu_reference(x, ids, w, w_up, w_down, widths), args)
        # Launch overhead shows at small batches; serving engines replay CUDA graphs there.
        row["swiglu_triton_graph_ms"], err = graph_ms(triton_fn, args)
        if err:
            row["graph_error"] = err
        if args.kernel_breakdown:
            row["kernel_ms"] = kernel_ms(triton_fn)
        if hasattr(torch, "_grouped_mm") and dtype == torch.bfloat16:
            try:
                up3, down3 = padded_expert_weights(w_up, w_down, widths)
                row["swiglu_grouped_mm_ms"] = bench_ms(lambda: grouped_mm_swiglu(x, ids, w, up3, down3), args)
                del up3, down3
            except (RuntimeError, NotImplementedError) as exc:  # recorded, not hidden: not every GPU/layout is served
                row["swiglu_grouped_mm_ms"] = None
                row["grouped_mm_error"] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            row["swiglu_grouped_mm_ms"] = None
            row["grouped_mm_error"] = "torch._grouped_mm missing or not bf16"
        row["route_triton_ms"] = bench_ms(lambda: fused_route_triton(logits, None, top_k), args)
        row["route_reference_ms"] = bench_ms(lambda: fused_route_reference(logits, None, top_k), args)

    tflops = lambda ms: None if ms is None else flops / ms / 1e9  # noqa: E731
    row["triton_tflops"] = tflops(row["swiglu_triton_ms"])
    row["triton_graph_tflops"] = tflops(row["swiglu_triton_graph_ms"])
    # What the programs' tiles load (mostly from L2), pass by pass as the Triton path aligns them, and at what rate.
    pass_tokens = tokens_per_pass(num_tokens, top_k)
    row["operand_bytes"] = sum(
        operand_bytes([math.ceil(c / cfg.block_size_m) for c in torch.bincount(ids[t0 : t0 + pass_tokens].reshape(-1),
                       minlength=num_experts).tolist()], list(widths), d_model, row["config"], itemsize)
        for t0 in range(0, num_tokens, pass_tokens)
    )  # fmt: skip
    graph = row["swiglu_triton_graph_ms"]
    row["operand_bytes_per_s_graph"] = None if graph is None else row["operand_bytes"] / (graph / 1e3)
    row["l2_read_bytes_per_s"] = l2_bytes_per_s
    row["loop_tflops"] = tflops(row["swiglu_loop_ms"])
    row["grouped_mm_tflops"] = tflops(row["swiglu_grouped_mm_ms"])
    row["speedup_vs_loop"] = row["swiglu_loop_ms"] / row["swiglu_triton_ms"]
    if peaks is not None:  # (FLOP/s, bytes/s)
        row["floor_ms"] = max(flops / peaks[0], bytes_min / peaks[1]) * 1e3
        row["fraction_of_floor"] = row["floor_ms"] / row["swiglu_triton_ms"]
    judge(row)
    return row


def tune(args: Args, dtype: torch.dtype, gen: torch.Generator, result: dict, out: Path) -> None:
    """Per E: compile the candidates in parallel, time each on every (top-k, d_model) at each token count from CUDA
    graph replays, and write the robust picks (`kernels.configs.tuning.pick_robust`) from the same timings: the
    table for every top-k (`E=..,N=..,device_name=...json`, over all the cases) and one per top-k tuned
    (`E=..,N=..,k=..,device_name=...json`, over that top-k's cases), which `get_config` reads first. A token count
    where no candidate ran on every case is left out of the tables, and said so."""
    device = torch.device("cuda")
    name = configs.device_name(device)
    smem = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    space = tuning.candidate_space(args.tune_space, torch.empty((), dtype=dtype).element_size(), smem)
    config_dir = Path(args.tune_out) if args.tune_out else configs.CONFIG_DIR
    config_dir.mkdir(parents=True, exist_ok=True)
    # A launch runs in passes of tokens_per_pass(T, k) tokens and looks its config up by that count, so each key is
    # timed on the top-k whose launches run passes of that many tokens (a large count: top-1 and top-2, not top-8).
    launch_keys = {k: {tokens_per_pass(t, k) for t in args.tune_tokens} for k in args.top_k}
    keys = sorted(set().union(*launch_keys.values()))
    result["tune"] = dict(space=args.tune_space, candidates=len(space), token_keys=keys, tables=[])
    for num_experts in args.experts:
        widths = expert_widths(num_experts, args.base_width)
        top_ks = [k for k in args.top_k if k <= num_experts]
        if not top_ks:
            print(f"E={num_experts}: skipped, every --top-k {list(args.top_k)} exceeds the experts")
            continue
        t_start = time.perf_counter()
        shapes = [tuning.Shape(num_experts, k, d, widths) for k in top_ks for d in args.d_model]
        failed = tuning.precompile(space, shapes, dtype, "cuda", workers=args.compile_workers)
        compile_s = time.perf_counter() - t_start
        print(f"E={num_experts} N={max(widths)}: compiled {len(space)} candidates for top-k {top_ks} in "
              f"{compile_s:.0f} s ({len(failed)} failed{': ' + next(iter(failed.values())) if failed else ''})")  # fmt: skip
        # None: the table for every top-k. Each top-k tuned gets its own table too, even alone: an older one for it
        # would otherwise be read before the table just written.
        per_k = [None, *top_ks]
        files = {k: config_dir / configs.config_file_name(num_experts, max(widths), name, dtype, k) for k in per_k}
        entry = dict(experts=num_experts, widths=list(widths), top_k=top_ks, d_model=list(args.d_model),
                     files=[f.name for f in files.values()], compile_s=compile_s,
                     failed={repr(c): e for c, e in failed.items()}, picks=[])  # fmt: skip
        result["tune"]["tables"].append(entry)
        tables = {k: {} for k in per_k}
        entry["written"] = []
        for key in keys:
            key_ks = [k for k in top_ks if key in launch_keys[k]]
            if not key_ks:
                continue
            cands = [c for c in space if c not in failed and tuning.eligible(c, key * max(key_ks) / num_experts)]
            times = {c: {} for c in cands}
            for top_k, d_model in itertools.product(key_ks, args.d_model):
                x, _, ids, w, w_up, w_down = make_case(key, num_experts, top_k, d_model, widths, dtype, device, gen)
                for cfg in cands:
                    times[cfg][f"k={top_k},d={d_model}"] = time_config(args, cfg, (x, ids, w, w_up, w_down), widths)
                del x, ids, w, w_up, w_down
            for k in (None, *key_ks):
                prefix = "" if k is None else f"k={k},"
                try:
                    pick = tuning.pick_robust({c: {case: ms for case, ms in t.items() if case.startswith(prefix)}
                                               for c, t in times.items()})  # fmt: skip
                except ValueError as exc:
                    print(f"  tokens={key:>5} {'every k' if k is None else f'k={k}':>7}: left out of the table: {exc}")
                    entry["picks"].append(dict(tokens=key, top_k=k, error=str(exc)))
                    continue
                tables[k][key] = pick.config
                worst = max(pick.slowdowns, key=pick.slowdowns.get)
                print(f"  tokens={key:>5} {'every k' if k is None else f'k={k}':>7}: {pick.config.to_json()} geomean "
                      f"slowdown {pick.score:.3f} over {len(pick.slowdowns)} cases (worst {pick.slowdowns[worst]:.2f}x "
                      f"at {worst}; {pick.candidates}/{len(cands)} candidates ran everywhere)")  # fmt: skip
                entry["picks"].append(dict(tokens=key, top_k=k, config=pick.config.to_json(), score=pick.score,
                                           slowdowns=pick.slowdowns, chosen_ms=pick.chosen_ms, best_ms=pick.best_ms,
                                           candidates=pick.candidates, timed=len(cands)))  # fmt: skip
                # Written after each token count (atomically): a run stopped at a time limit keeps what it tuned.
                configs.write_configs(files[k], tables[k])
                if files[k].name not in entry["written"]:
                    entry["written"].append(files[k].name)
            write_json_atomic(out, {**result, "partial": True})
        entry["wall_s"] = time.perf_counter() - t_start
        print(f"wrote {', '.join(entry['written']) or 'no table'} to {config_dir} ({entry['wall_s']:.0f} s)")


def cpu_reference_timings(gen: torch.Generator) -> list[dict]:
    """Median wall times of the reference path on a small fp32 case (the CPU cannot run the Triton kernels)."""
    rows, dtype = [], torch.float32
    num_tokens, num_experts, top_k, d_model = 256, 8, 2, 128
    widths = expert_widths(num_experts, 64)
    x, logits, ids, w, w_up, w_down = make_case(num_tokens, num_experts, top_k, d_model, widths, dtype, "cpu", gen)
    for op, fn in (
        ("route_reference", lambda: fused_route_reference(logits, None, top_k)),
        ("swiglu_loop", lambda: grouped_swiglu_reference(x, ids, w, w_up, w_down, widths)),
    ):
        times = []
        with torch.inference_mode():
            for _ in range(25):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        rows.append(dict(op=op, tokens=num_tokens, experts=num_experts, top_k=top_k, d_model=d_model,
                         widths=list(widths), median_ms=statistics.median(times[5:])))  # fmt: skip
    return rows


if __name__ == "__main__":
    args = parse_args()
    swiglu.TMA_WEIGHTS = POLICY_SETTINGS[args.tma_weights]  # the Triton path reads these on every call
    swiglu.ATOMIC_TOP2 = POLICY_SETTINGS[args.atomic_top2]
    swiglu.DEVICE_DESCRIPTORS = args.device_descriptors
    dtype = configs.DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    on_gpu = torch.cuda.is_available()
    gen = torch.Generator("cuda" if on_gpu else "cpu").manual_seed(args.seed)
    device = configs.device_name("cuda" if on_gpu else "cpu")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = Path(args.out or f"results/moe_kernels/{device}__{date[:10]}{'__tune' if args.tune else ''}.json")
    # Which kernels were timed: scripts/gpu_kernels.sh can put an earlier version first on the path (KERNELS_FROM).
    kernels_dir = Path(configs.__file__).resolve().parents[1]
    result = dict(benchmark="moe_kernels", date=date, device=device, figures="measured", torch=torch.__version__,
                  kernels=str(kernels_dir.relative_to(Path.cwd().resolve()) if kernels_dir.is_relative_to(
                      Path.cwd().resolve()) else kernels_dir), args=dataclasses.asdict(args))  # fmt: skip

    if args.summarise:
        result = read_grid(args.summarise)
        for row in result["cases"]:
            judge(row)
        result.update(summarise(result["cases"]), rejudged=dict(date=date, source=args.summarise))
        print(f"{args.summarise}: {result.get('device', '?')}, {result.get('date', '?')}")
        print_summary(result["cases"], result)
        if args.out:
            write_json_atomic(args.out, result)
            print(f"wrote {args.out}")
        raise SystemExit(0)
    if not on_gpu:
        torch.set_num_threads(1)  # a stable figure on a shared CPU; the timings are only a smoke check
        print(
            "moe_kernels: this benchmark needs CUDA (the Triton kernels run on the GPU); timing the PyTorch reference"
        )
        print("path on a small case on the CPU instead.")
        result["note"] = "no CUDA: reference path on the CPU only"
        result["cpu_reference"] = cpu_reference_timings(gen)
        for r in result["cpu_reference"]:
            print(f"  cpu {r['op']:>16}: T={r['tokens']} E={r['experts']} k={r['top_k']} d={r['d_model']} "
                  f"{r['median_ms']:.3f} ms (median)")  # fmt: skip
    elif args.tune:
        import triton

        result.update(benchmark="moe_kernels_tune", driver=driver_version(), triton=triton.__version__)
        tune(args, dtype, gen, result, out)
    else:
        import triton

        spec = peak_figures(torch.cuda.get_device_name())
        peaks = None if spec is None else spec[1:]
        result.update(driver=driver_version(), triton=triton.__version__,
                      peak=None if spec is None else dict(spec=spec[0], flops_per_s=spec[1], bytes_per_s=spec[2],
                                                          source="telemetry.get_gpu_spec (datasheet)"))  # fmt: skip
        try:  # the roof of the kernels' operand traffic (`operand_bytes_per_s_graph` of each row)
            from _l2_probe import l2_read_bytes_per_s

            result["l2_read_bytes_per_s"] = l2_read_bytes_per_s()
            print(f"L2 read rate: {result['l2_read_bytes_per_s'] / 1e12:.2f} TB/s (benchmarks/_l2_probe.py)")
        except Exception as exc:  # recorded, not fatal: the grid is what this run is for
            result["l2_read_bytes_per_s"], result["l2_probe_error"] = None, f"{type(exc).__name__}: {exc}"[:300]
        rows = []
        for num_experts, top_k, d_model, num_tokens in itertools.product(args.experts, args.top_k, args.d_model,
                                                                          args.tokens):  # fmt: skip
            if top_k > num_experts:
                continue
            row = run_case(args, num_tokens, num_experts, top_k, d_model, dtype, peaks, gen,
                           result["l2_read_bytes_per_s"])  # fmt: skip
            rows.append(row)
            write_json_atomic(out, {**result, "cases": rows, "partial": True})  # a run cut short keeps its cases
            gm = row["grouped_mm_tflops"]
            gr = row["swiglu_triton_graph_ms"]
            print(f"E={num_experts:>2} k={top_k} d={d_model} T={num_tokens:>5}: triton {row['swiglu_triton_ms']:.3f} ms "
                  f"(graph {'-' if gr is None else f'{gr:.3f} ms'}, host {row['swiglu_triton_host_ms']:.3f} ms, operands "
                  f"{(row['operand_bytes_per_s_graph'] or 0) / 1e12:.1f} TB/s) "
                  f"{row['triton_tflops']:.0f} TF/s ({row['fraction_of_dense']:.0%} of dense "
                  f"{row['dense_tflops']:.0f}, rounds {fraction_range(row)}), loop {row['swiglu_loop_ms']:.3f} ms (x{row['speedup_vs_loop']:.2f}), "
                  f"grouped_mm {'-' if gm is None else f'{gm:.0f} TF/s'}, route {row['route_triton_ms']:.3f} vs "
                  f"{row['route_reference_ms']:.3f} ms{launches(row)}"
                  + ("" if "target" not in row else f"  [{row['target']}: {'met' if row['target_met'] else 'MISSED'}]"))  # fmt: skip
        result["cases"] = rows
        result.update(summarise(rows))
        print_summary(rows, result)

    write_json_atomic(out, result)
    print(f"wrote {out}")
