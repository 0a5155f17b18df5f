"""The command line of `benchmarks/moe_kernels.py`: its options as one dataclass (the flags map onto its fields one to
one, their help from the fields' docstrings) and the checks that refuse a bad value before anything is timed."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from _cli import check_out_file, field_help, positive_int
from _moe_targets import read_grid

from kernels import configs
from kernels.configs import tuning
from kernels.routing import MAX_EXPERTS


@dataclass
class Args:
    experts: tuple[int, ...] = (8, 16, 64)
    """numbers of experts E"""
    top_k: tuple[int, ...] = (1, 2, 8)
    """experts per token k (cases with k > E are skipped)"""
    tokens: tuple[int, ...] = (1024, 2048, 8192, 16384, 65536)
    """tokens per launch"""
    d_model: tuple[int, ...] = (1024, 4096)
    """model widths"""
    base_width: int = 1024
    """expert widths are base_width x (0.25, 0.5, 0.75, 1, 1, 1.25, 1.5, 2), tiled to E experts"""
    dtype: str = "bfloat16"
    """input dtype: bfloat16, float16 or float32"""
    warmup_ms: int = 25
    """do_bench warm-up time per measurement (ms)"""
    rep_ms: int = 100
    """do_bench repetition time per measurement (ms)"""
    pair_rounds: int = 5
    """rounds in which the Triton path and the dense GEMM are timed turn about (each round's do_bench over
    rep_ms / pair_rounds, every other round in the reverse order): fraction_of_dense is the median of the rounds'
    ratios, so both figures of a ratio share the GPU's clocks of the moment (a power-capped H100's move with its
    temperature); 1 times each once"""
    seed: int = 0
    """seed of the inputs"""
    out: str = ""
    """JSON path; default results/moe_kernels/<device>__<date>.json"""
    tune: bool = False
    """tune block sizes instead of benchmarking: per E, a table for every top-k (kernels/configs/E=..,N=..,
    device_name=...json, each entry picked over every --top-k and --d-model given) and one per --top-k
    (E=..,N=..,k=..,device_name=...json); the report (every pick, its slowdowns) to --out"""
    tune_tokens: tuple[int, ...] = (1, 16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    """token counts of the tuned table; a count is tuned as the passes it runs as (kernels.swiglu.tokens_per_pass: at
    most 262144 / k tokens), so 65536 tokens is a key of its own at top-1 and top-2, and 32768 at top-8"""
    tune_space: str = "quick"
    """candidate block sizes (kernels/configs/tuning.py): quick (20 on an H100, the tile shapes that won there for
    bf16) or full (vLLM's sweep, 156 on an H100); both without the tiles that would spill registers, both with the
    down GEMM at twice the columns for tiles of 64 rows or more and up to 128 columns"""
    tune_out: str = ""
    """directory of the tuned tables; default kernels/configs/"""
    compile_workers: int = 8
    """processes compiling the candidates before they are timed (1: compile in the timing process)"""
    segment_order: str = "widest-first"
    """order of the experts' aligned segments, so of their GEMM programs, on the Triton path: widest-first (the
    default of kernels.swiglu.grouped_swiglu_triton) or expert (0, 1, ..., E - 1), to time what the order buys"""
    tma_weights: str = "auto"
    """whether the GEMMs load their weight tiles through tensor descriptors (TMA on Hopper; kernels.swiglu.TMA_WEIGHTS):
    auto (the library's default: from kernels.swiglu.TMA_MIN_SLOTS slots a pass on compute capability 9.0 or later),
    on or off, to time what they buy; each row records whether the policy took them"""
    atomic_top2: str = "auto"
    """whether the down GEMM at top-2 adds each token's two rows into the zeroed output instead of a combine launch
    (kernels.swiglu.ATOMIC_TOP2): auto (the library's default: on compute capability 9.0 or later), on or off, to
    time what it buys; each row records whether it ran"""
    device_descriptors: bool = False
    """where the weight tiles go through tensor descriptors, each GEMM program makes its own instead of the host
    encoding one at every launch (kernels.swiglu.DEVICE_DESCRIPTORS, experimental; with --tma-weights on, to time
    it against the host's at every size); each row records it"""
    kernel_breakdown: bool = True
    """profile each case's Triton call (torch.profiler: CUPTI kernel records): the GPU time of each kernel it
    launches (`kernel_ms`), each GEMM launch's fraction of dense (`gemm_fraction_of_dense`) and the time of the
    other kernels (alignment, combine); --no-kernel-breakdown skips it"""
    summarise: str = ""
    """a grid JSON written earlier: re-judge its cases (targets, and why each missed dense target missed), print the
    summary and, with --out, write the re-judged JSON; times nothing, needs no GPU"""


POLICY_SETTINGS = {"auto": None, "on": True, "off": False}  # --tma-weights, --atomic-top2: kernels.swiglu


def parse_args(argv: list[str] | None = None, description: str = "") -> Args:
    """Args from the command line; a bad value exits with a message naming it and what is allowed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = {"dtype": sorted(configs.DTYPES), "tune_space": sorted(tuning.SPACES),
               "segment_order": ["expert", "widest-first"], "tma_weights": sorted(POLICY_SETTINGS),
               "atomic_top2": sorted(POLICY_SETTINGS)}  # fmt: skip
    helps = field_help(Args)
    for f in dataclasses.fields(Args):
        flag, help_text = "--" + f.name.replace("_", "-"), helps[f.name]
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif f.type.startswith("tuple"):
            parser.add_argument(flag, type=positive_int, nargs="+", default=f.default, help=help_text)
        elif f.type == "int":
            parser.add_argument(flag, type=int if f.name == "seed" else positive_int, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, choices=choices.get(f.name), default=f.default, help=help_text)
    args = Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in vars(parser.parse_args(argv)).items()})
    if max(args.experts) > MAX_EXPERTS:
        parser.error(f"--experts must be at most {MAX_EXPERTS}, got {max(args.experts)}")
    if args.out:  # "" is the default path, made later
        check_out_file(parser, "--out", args.out)  # now, not after the run when the JSON is written
    if args.summarise:
        try:
            read_grid(args.summarise)
        except ValueError as exc:
            parser.error(f"--summarise {args.summarise}: {exc}")
    return args
