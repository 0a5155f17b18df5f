"""Block sizes for the grouped SwiGLU GEMMs, per device, keyed by token count (as vLLM's `fused_moe/configs/`).

One JSON file per (experts, widest expert, device, dtype), named like vLLM's:
`E=8,N=4096,device_name=NVIDIA_H100_80GB_HBM3.json` for bf16/fp16 and `...,dtype=float32.json` for fp32, where `N`
is the widest expert's width max(f_e). Each file maps a token count (the tokens of one pass, as a string) to
`{"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}` (and optionally
`"BLOCK_SIZE_N_DOWN"`, the down GEMM's column tile where it differs); `get_config` picks
the entry with the nearest token count. A table may also be tuned for one top-k, `E=64,N=2048,k=1,device_name=...`
(vLLM's models each have one top-k; our benchmark grid spans several, and few slots per expert want other tiles
than many): where there is one for the launch's top-k it is read first. With no file, a heuristic default is used
and a warning logged (once per shape). `python benchmarks/moe_kernels.py --tune` writes the files (see README.md
beside this file) with the help of `kernels.configs.tuning` (the candidates, the robust pick over several shapes,
parallel compiling).

Tests force a config with `with force_config(MoeKernelConfig(...)):`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels._files import write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent
# The input dtypes the kernels and their tables serve, by name (the benchmark's --dtype, a tuning report's args).
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Shared memory one block may use when the device does not say (bytes); 99 KiB fits every GPU since Volta.
_FALLBACK_SMEM_BYTES = 99 * 1024


@dataclass(frozen=True)
class MoeKernelConfig:
    """Tile sizes and launch settings of the grouped GEMMs; BLOCK_SIZE_M is also the alignment block of the tokens.

    Attributes:
        block_size_m: rows (token slots) per tile; power of two >= 16 (`tl.dot` needs >= 16).
        block_size_n: output columns per tile; power of two >= 16.
        block_size_k: reduction step; power of two >= 16.
        group_size_m: M-tiles per launch group (program-id swizzle for L2 reuse); >= 1.
        num_warps: warps per program.
        num_stages: software pipeline depth of the K loop.
        block_size_n_down: the down GEMM's output columns per tile, None for `block_size_n`. The gate/up GEMM keeps
            two accumulators (gate, up) and loads two weight tiles a step, the down GEMM one of each: at twice the
            columns the down tile takes the same accumulator registers and shared memory as the gate/up tile and
            does twice the FLOPs per byte of activations it loads (vLLM's single-accumulator tables on an H100 pick
            128x256 tiles for large batches). Whether it is faster is the GPU's to say: the tuner times both.
    """

    block_size_m: int = 64
    block_size_n: int = 64
    block_size_k: int = 32
    group_size_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    block_size_n_down: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # "64" or 64.0 failed below with a TypeError naming no field
            v = getattr(self, f.name)
            if f.name == "block_size_n_down" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"MoeKernelConfig.{f.name} must be an integer, got {v!r}")
            object.__setattr__(self, f.name, int(v))  # numpy integers hash and print as ints, for the tables' keys
        for name in ("block_size_m", "block_size_n", "block_size_k", "block_size_n_down"):
            v = getattr(self, name)
            if name == "block_size_n_down" and v is None:
                continue
            if v < 16 or v & (v - 1):
                raise ValueError(f"MoeKernelConfig.{name} must be a power of two >= 16, got {v}")
        if self.group_size_m < 1:
            raise ValueError(f"MoeKernelConfig.group_size_m must be >= 1, got {self.group_size_m}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"MoeKernelConfig.num_warps must be a power of two <= 32, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"MoeKernelConfig.num_stages must be >= 1, got {self.num_stages}")

    @property
    def down_block_size_n(self) -> int:
        """The down GEMM's column tile: `block_size_n_down`, or `block_size_n` where that is None."""
        return self.block_size_n if self.block_size_n_down is None else self.block_size_n_down

    def to_json(self) -> dict[str, int]:
        """vLLM's key names: {"BLOCK_SIZE_M": ..., "num_warps": ..., ...}, and "BLOCK_SIZE_N_DOWN" where set."""
        entry = {
            "BLOCK_SIZE_M": self.block_size_m,
            "BLOCK_SIZE_N": self.block_size_n,
            "BLOCK_SIZE_K": self.block_size_k,
            "GROUP_SIZE_M": self.group_size_m,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
        }
        if self.block_size_n_down is not None:
            entry["BLOCK_SIZE_N_DOWN"] = self.block_size_n_down
        return entry

    @classmethod
    def from_json(cls, entry: dict[str, int]) -> MoeKernelConfig:
        """Inverse of `to_json`; unknown or missing keys raise `ValueError` (a vLLM table's entries read as is)."""
        names = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}
        if not names <= set(entry) <= names | {"BLOCK_SIZE_N_DOWN"}:
            raise ValueError(
                f"a MoE kernel config needs the keys {sorted(names)} and may have BLOCK_SIZE_N_DOWN, "
                f"got {sorted(entry)}"
            )
        # 64.0 reads as 64; 16.7 or "64" is refused by name (__post_init__), not cut to 16 or parsed.
        whole = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v  # noqa: E731
        return cls(**{k.lower(): whole(v) for k, v in entry.items()})


_FORCED: contextvars.ContextVar[MoeKernelConfig | None] = contextvars.ContextVar("moe_kernel_config", default=None)


@contextlib.contextmanager
def force_config(config: MoeKernelConfig) -> Iterator[MoeKernelConfig]:
    """Use `config` for every grouped-GEMM launch inside the block (tests, tuning); nests and restores."""
    if not isinstance(config, MoeKernelConfig):
        raise TypeError(f"force_config takes a MoeKernelConfig, got {type(config).__name__}")
    token = _FORCED.set(config)
    try:
        yield config
    finally:
        _FORCED.reset(token)


def device_name(device: str | torch.device) -> str:
    """File-name form of the device: `NVIDIA_H100_80GB_HBM3` on CUDA, `cpu` otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device).replace(" ", "_")


def dtype_suffix(dtype: torch.dtype) -> str:
    """The file-name dtype part: empty for 16-bit inputs, `,dtype=float32` for fp32 (as vLLM)."""
    if dtype in (torch.bfloat16, torch.float16):
        return ""
    if dtype == torch.float32:
        return ",dtype=float32"
    raise ValueError(f"no MoE kernel configs for dtype {dtype}; use bfloat16, float16 or float32")


def config_file_name(
    num_experts: int, max_width: int, device: str, dtype: torch.dtype, top_k: int | None = None
) -> str:
    """E.g. `E=8,N=4096,device_name=NVIDIA_H100_80GB_HBM3.json`; `device` in `device_name` form.

    With `top_k`, the name of a table tuned for that top-k alone: `E=64,N=2048,k=1,device_name=...json`.
    """
    k_part = "" if top_k is None else f",k={top_k}"
    return f"E={num_experts},N={max_width}{k_part},device_name={device}{dtype_suffix(dtype)}.json"


@functools.lru_cache(maxsize=64)
def load_configs(
    num_experts: int,
    max_width: int,
    device: str,
    dtype: torch.dtype,
    config_dir: Path = CONFIG_DIR,
    top_k: int | None = None,
) -> dict[int, MoeKernelConfig] | None:
    """The tuned table {token count: config} for this shape and device, or None without one.

    `top_k=None` reads the table for every top-k (a missing one is warned about once); a `top_k` reads the table
    tuned for that top-k alone, which is optional (missing: None, no warning).
    """
    path = Path(config_dir) / config_file_name(num_experts, max_width, device, dtype, top_k)
    if not path.is_file():
        if top_k is None:
            logger.warning(
                "no tuned MoE kernel config %s in %s; using the heuristic default (write one with "
                "`python benchmarks/moe_kernels.py --tune` on this GPU)",
                path.name,
                path.parent,
            )
        return None
    table = read_configs(path)
    logger.info("MoE kernel configs from %s (%d token counts)", path.name, len(table))
    return table


def read_configs(path: Path) -> dict[int, MoeKernelConfig]:
    """The table {token count: config} in the file at `path`; a `ValueError` naming the file if it is not one."""
    try:
        raw = json.loads(Path(path).read_text())
        table = {int(tokens): MoeKernelConfig.from_json(entry) for tokens, entry in raw.items()}
    except (AttributeError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"bad MoE kernel config file {path}: {exc}") from exc
    if not table:
        raise ValueError(f"MoE kernel config file {path} has no entries")
    return table


@functools.lru_cache(maxsize=16)
def _device_facts(device: torch.device) -> tuple[str, int]:
    """(`device_name`, shared memory per block in bytes), queried once per device."""
    if device.type != "cuda":
        return device_name(device), _FALLBACK_SMEM_BYTES
    props = torch.cuda.get_device_properties(device)
    return device_name(device), int(getattr(props, "shared_memory_per_block_optin", _FALLBACK_SMEM_BYTES))


def default_config(
    num_tokens: int, num_experts: int, top_k: int, dtype: torch.dtype, smem_bytes: int = _FALLBACK_SMEM_BYTES
) -> MoeKernelConfig:
    """Heuristic tiles when no tuned file matches (vLLM's `get_default_config`, adapted).

    Few slots per expert (decode-like batches) take 16-row tiles so padding wastes little; more take 64-row tiles of
    128 columns, and more than 128 slots an expert 128x128 tiles. On an H100 the 64x64 tiles this used between 32 and
    512 slots an expert ran at 0.30-0.42 of a dense GEMM (results/gpu/kernels/grid.json), 128x128 above 512 at
    0.51-0.72 (not measured in between: predicted from these and from vLLM's H100 table for Mixtral, 8 experts at
    top-2, whose single-accumulator kernel takes 64x128 to 64x256 tiles at 32-128 slots an expert and 128x256 from 256
    on). The gate/up tiles here hold two accumulators, so 64x128 and 128x128 match vLLM's 64x256 and 128x256. 64x128
    runs on 8 warps: on 4 it spilled registers compiled for sm_90 in fp32 (32 bytes) and for sm_80 in fp16 (40 bytes;
    `tests/kernels/test_kernel_compile.py`). The pipeline depth is the most stages whose tiles fit `smem_bytes` (the
    up-projection kernel holds one A tile and two B tiles, gate and up, per stage), between 2 and 4.
    """
    slots_per_expert = num_tokens * top_k / max(1, num_experts)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if slots_per_expert <= 32:
        bm, bn, bk, group, warps = 16, 64, 64, 1, 4
    elif slots_per_expert <= 128:
        bm, bn, bk, group, warps = 64, 128, 64, 8, 8
    else:
        bm, bn, bk, group, warps = 128, 128, 64, 8, 8
    if itemsize == 4:
        bk = 32
    stage_bytes = (bm * bk + 2 * bk * bn) * itemsize
    stages = max(2, min(4, (smem_bytes - 8 * 1024) // stage_bytes))
    return MoeKernelConfig(bm, bn, bk, group, warps, stages)


def get_config(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    max_width: int,
    dtype: torch.dtype,
    device: str | torch.device,
    config_dir: Path = CONFIG_DIR,
) -> MoeKernelConfig:
    """The config for one launch: the forced one, else the tuned entry nearest `num_tokens` (from the table tuned
    for this top-k if there is one, else the table for every top-k), else the default. `dtype` is a torch dtype or
    its name in `DTYPES`.

    Resolved once per distinct argument set (cached): it is on every launch's path.
    """
    return config_source(num_tokens, num_experts, top_k, max_width, dtype, device, config_dir)[0]


def config_source(
    num_tokens: int,
    num_experts: int,
    top_k: int,
    max_width: int,
    dtype: torch.dtype,
    device: str | torch.device,
    config_dir: Path = CONFIG_DIR,
) -> tuple[MoeKernelConfig, str]:
    """`get_config`'s config and where it came from: "forced", "<table file>[<token count of the entry>]", or
    "default" (`default_config`). For reports: a figure measured on default tiles should say so."""
    forced = _FORCED.get()
    if forced is not None:
        return forced, "forced"
    if isinstance(dtype, str):  # a name, as the benchmark's --dtype: "bfloat16" was refused, told to use bfloat16
        if dtype not in DTYPES:
            raise ValueError(f"no MoE kernel configs for dtype {dtype!r}; use one of {tuple(DTYPES)} or a torch.dtype")
        dtype = DTYPES[dtype]
    sizes = (num_tokens, num_experts, top_k, max_width)
    # Once per launch: the general check only where a size is not a plain int (0.2 us, against 2 us for it always).
    if not (all(type(v) is int for v in sizes) and num_tokens >= 0 and min(sizes[1:]) >= 1):
        _check_launch_sizes(*sizes)
    return _resolve_config(num_tokens, num_experts, top_k, max_width, dtype, device, config_dir)


def _check_launch_sizes(num_tokens, num_experts, top_k, max_width) -> None:
    """ValueError naming a launch size that is not an integer (a numpy integer is one) or is too small."""
    for name, value, least in (("num_tokens", num_tokens, 0), ("num_experts", num_experts, 1), ("top_k", top_k, 1),
                               ("max_width", max_width, 1)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


@functools.lru_cache(maxsize=1024)
def _resolve_config(num_tokens, num_experts, top_k, max_width, dtype, device, config_dir) -> tuple:
    name, smem_bytes = _device_facts(torch.device(device))
    for k in (top_k, None):  # the table tuned for this top-k first
        table = load_configs(num_experts, max_width, name, dtype, Path(config_dir), k)
        if table is not None:
            tokens = min(table, key=lambda m: abs(m - num_tokens))
            return table[tokens], f"{config_file_name(num_experts, max_width, name, dtype, k)}[{tokens}]"
    return default_config(num_tokens, num_experts, top_k, dtype, smem_bytes), "default"


def clear_cache() -> None:
    """Forget the tables read, the configs resolved and the devices queried (after a table file changed)."""
    load_configs.cache_clear()
    _resolve_config.cache_clear()
    _device_facts.cache_clear()


def write_configs(path: Path, table: dict[int, MoeKernelConfig]) -> None:
    """Write a tuned table in the file format `load_configs` reads (sorted by token count), atomically (a temporary
    file, then a rename), so a run cut short leaves the previous table whole."""
    body = {str(m): table[m].to_json() for m in sorted(table)}
    write_text_atomic(path, json.dumps(body, indent=4) + "\n")
    clear_cache()  # a table read before this write is stale


__all__ = [
    "CONFIG_DIR",
    "DTYPES",
    "MoeKernelConfig",
    "clear_cache",
    "config_file_name",
    "config_source",
    "default_config",
    "device_name",
    "dtype_suffix",
    "force_config",
    "get_config",
    "load_configs",
    "read_configs",
    "write_configs",
]
