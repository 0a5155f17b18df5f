"""Block-size configs: file names, the cached loader, nearest token count, the default, `force_config`."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from kernels.configs import (
    CONFIG_DIR,
    MoeKernelConfig,
    clear_cache,
    config_file_name,
    config_source,
    default_config,
    force_config,
    get_config,
    write_configs,
)

SMALL = MoeKernelConfig(16, 32, 64, 1, 4, 3)
LARGE = MoeKernelConfig(128, 128, 64, 8, 8, 3)


def test_file_names_follow_vllm():
    assert config_file_name(8, 4096, "NVIDIA_H100_80GB_HBM3", torch.bfloat16) == (
        "E=8,N=4096,device_name=NVIDIA_H100_80GB_HBM3.json"
    )
    assert config_file_name(8, 4096, "NVIDIA_H200", torch.float32).endswith(",dtype=float32.json")


def test_tuned_table_nearest_token_count(tmp_path):
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32), {16: SMALL, 4096: LARGE})
    clear_cache()
    pick = lambda tokens: get_config(tokens, 4, 2, 64, torch.float32, "cpu", config_dir=tmp_path)  # noqa: E731
    assert pick(1) == SMALL and pick(1000) == SMALL and pick(3000) == LARGE and pick(100_000) == LARGE


def test_table_tuned_for_the_launch_top_k_comes_first(tmp_path, caplog):
    assert config_file_name(64, 2048, "cpu", torch.bfloat16, top_k=1) == "E=64,N=2048,k=1,device_name=cpu.json"
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32), {16: SMALL})
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32, top_k=1), {16: LARGE})
    clear_cache()
    pick = lambda top_k: get_config(16, 4, top_k, 64, torch.float32, "cpu", config_dir=tmp_path)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="kernels.configs"):
        assert pick(1) == LARGE  # the k=1 table
        assert pick(2) == SMALL  # no k=2 table: the one for every top-k, and no warning for the missing k=2 one
    assert not [r for r in caplog.records if "no tuned" in r.getMessage()]


def test_config_source_says_which_table_or_default(tmp_path):
    source = lambda top_k: config_source(3000, 4, top_k, 64, torch.float32, "cpu", config_dir=tmp_path)  # noqa: E731
    clear_cache()
    assert source(2) == (default_config(3000, 4, 2, torch.float32), "default")  # no table yet
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32), {16: SMALL, 4096: LARGE})
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32, top_k=1), {16: SMALL})
    assert source(2) == (LARGE, "E=4,N=64,device_name=cpu,dtype=float32.json[4096]")
    assert source(1) == (SMALL, "E=4,N=64,k=1,device_name=cpu,dtype=float32.json[16]")
    with force_config(LARGE):
        assert source(1) == (LARGE, "forced")


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", '{"16": {"BLOCK_SIZE_M": 16}}', "{}"])
def test_corrupt_table_is_a_clear_error(tmp_path, body):
    (tmp_path / config_file_name(4, 64, "cpu", torch.float32)).write_text(body)
    clear_cache()
    with pytest.raises(ValueError, match="MoE kernel config file"):
        get_config(16, 4, 2, 64, torch.float32, "cpu", config_dir=tmp_path)


def test_write_configs_replaces_a_table_atomically(tmp_path):
    path = tmp_path / config_file_name(4, 64, "cpu", torch.float32)
    write_configs(path, {16: SMALL})
    assert get_config(16, 4, 2, 64, torch.float32, "cpu", config_dir=tmp_path) == SMALL
    write_configs(path, {16: LARGE})  # also drops the cached table
    assert get_config(16, 4, 2, 64, torch.float32, "cpu", config_dir=tmp_path) == LARGE
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_missing_file_warns_once_and_uses_default(tmp_path, caplog):
    clear_cache()
    with caplog.at_level(logging.WARNING, logger="kernels.configs"):
        a = get_config(512, 8, 2, 96, torch.bfloat16, "cpu", config_dir=tmp_path)
        b = get_config(512, 8, 2, 96, torch.bfloat16, "cpu", config_dir=tmp_path)
    warnings = [r for r in caplog.records if "no tuned MoE kernel config" in r.getMessage()]
    assert len(warnings) == 1 and "E=8,N=96,device_name=cpu.json" in warnings[0].getMessage()
    assert a == b == default_config(512, 8, 2, torch.bfloat16)


def test_force_config_nests_and_restores(tmp_path):
    clear_cache()
    pick = lambda: get_config(64, 4, 1, 32, torch.float32, "cpu", config_dir=tmp_path)  # noqa: E731
    before = pick()
    with force_config(SMALL):
        assert pick() == SMALL
        with force_config(LARGE):
            assert pick() == LARGE
        assert pick() == SMALL
    assert pick() == before
    with pytest.raises(TypeError, match="force_config takes a MoeKernelConfig, got dict"):
        with force_config({"BLOCK_SIZE_M": 16}):
            pass
    assert pick() == before  # a refused force leaves nothing forced


def test_config_validation_and_json_round_trip():
    assert MoeKernelConfig.from_json(LARGE.to_json()) == LARGE
    with pytest.raises(ValueError, match="power of two"):
        MoeKernelConfig(block_size_m=8)
    with pytest.raises(ValueError, match="keys"):
        MoeKernelConfig.from_json({"BLOCK_SIZE_M": 16})
    assert "BLOCK_SIZE_N_DOWN" not in LARGE.to_json() and LARGE.down_block_size_n == LARGE.block_size_n
    wide = MoeKernelConfig(128, 128, 64, 8, 8, 3, block_size_n_down=256)
    assert wide.to_json()["BLOCK_SIZE_N_DOWN"] == 256 and wide.down_block_size_n == 256
    assert MoeKernelConfig.from_json(wide.to_json()) == wide
    with pytest.raises(ValueError, match="block_size_n_down must be a power of two"):
        MoeKernelConfig(block_size_n_down=96)
    with pytest.raises(ValueError, match="BLOCK_SIZE_N_DOWN"):
        MoeKernelConfig.from_json({**LARGE.to_json(), "BLOCK_SIZE_N_UP": 64})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("num_tokens", [1, 64, 2048, 65536])
def test_default_config_fits_shared_memory(dtype, num_tokens):
    smem = 99 * 1024
    cfg = default_config(num_tokens, 16, 2, dtype, smem)
    itemsize = torch.empty((), dtype=dtype).element_size()
    stage_bytes = (cfg.block_size_m * cfg.block_size_k + 2 * cfg.block_size_k * cfg.block_size_n) * itemsize
    assert 2 <= cfg.num_stages <= 4 and cfg.num_stages * stage_bytes <= smem


def test_shipped_config_files_parse():
    paths = sorted(CONFIG_DIR.glob("*.json"))
    assert paths, f"no tuned tables in {CONFIG_DIR}"  # an empty folder parsed vacuously
    for path in paths:
        table = {int(k): MoeKernelConfig.from_json(v) for k, v in json.loads(path.read_text()).items()}
        assert table, path.name


def test_get_config_takes_a_dtype_name(tmp_path):
    """"bfloat16" was refused with "no MoE kernel configs for dtype bfloat16; use bfloat16, float16 or float32"."""
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32), {16: SMALL})
    assert get_config(16, 4, 2, 64, "float32", "cpu", config_dir=tmp_path) == SMALL
    with pytest.raises(ValueError, match="dtype 'bf16'; use one of"):
        get_config(16, 4, 2, 64, "bf16", "cpu", config_dir=tmp_path)


@pytest.mark.parametrize("value", ["64", 64.0, True])
def test_a_config_value_that_is_not_an_integer_is_named(value):
    with pytest.raises(ValueError, match="MoeKernelConfig.block_size_n must be an integer"):  # was a TypeError
        MoeKernelConfig(block_size_n=value)


def test_a_table_entry_is_read_whole_or_refused_by_name():
    """16.7 was cut to 16 and "64" parsed; 64.0 (a table written by a tool with floats) still reads as 64."""
    assert MoeKernelConfig.from_json({**LARGE.to_json(), "BLOCK_SIZE_M": 128.0}) == LARGE
    for value in (16.7, "64"):
        with pytest.raises(ValueError, match="MoeKernelConfig.block_size_m must be an integer"):
            MoeKernelConfig.from_json({**LARGE.to_json(), "BLOCK_SIZE_M": value})


@pytest.mark.parametrize(
    "args, name",
    [((16, 0, 2, 64), "num_experts"), ((16, 4, 0, 64), "top_k"), ((-1, 4, 2, 64), "num_tokens"),
     ((16, 4, 2, 64.5), "max_width"), ((16, True, 2, 64), "num_experts")],
)  # fmt: skip
def test_get_config_names_a_bad_launch_size(tmp_path, args, name):
    """num_experts=0 looked for a table E=0,... and warned that it was missing."""
    with pytest.raises(ValueError, match=f"{name} must be an integer >= "):
        get_config(*args, torch.float32, "cpu", config_dir=tmp_path)



def test_get_config_takes_an_empty_launch_and_numpy_integers(tmp_path):
    write_configs(tmp_path / config_file_name(4, 64, "cpu", torch.float32), {16: SMALL})
    assert get_config(0, 4, 2, 64, torch.float32, "cpu", config_dir=tmp_path) == SMALL
    assert get_config(np.int64(16), np.int32(4), 2, np.int64(64), torch.float32, "cpu", config_dir=tmp_path) == SMALL
