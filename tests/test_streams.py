"""Token streams as a user meets them: their own text file, a domain schedule written by hand, a stream seed."""

import os

import numpy as np
import pytest

import moe_runtime as mr
from moe_runtime.streams import BLOCK_BYTES

BAD_SEGMENTS = [
    ("prose", 4096),  # a flat pair: was "too many values to unpack"
    (("prose", 1.5),),  # was accepted, a fractional token count
    (("prose", "4096"),),  # was a TypeError from `<=`
    ((4096, "prose"),),  # the pair the wrong way round
    (("prose", 0),),
]


def test_a_small_text_files_splits_are_whole_blocks(tmp_path):
    """A file just over 12 KiB: its test split was the 1-byte tail block, which the runtime (split='test' by default)
    served over and over; validation and test now take whole 4 KiB blocks and the tail stays in train."""
    f = tmp_path / "notes.txt"
    f.write_bytes(bytes(range(97, 123)) * (3 * BLOCK_BYTES // 26 + 1))  # 12,298 bytes: a 10-byte tail block
    corpus = mr.load_corpus(str(f))
    assert len(corpus.splits["test"]) == len(corpus.splits["validation"]) == BLOCK_BYTES
    assert sum(len(v) for v in corpus.splits.values()) == f.stat().st_size
    tokens, _ = mr.TokenStream(mr.DomainSchedule.constant(str(f)), split="test", seed=0).next(64)
    assert len(set(tokens.tolist())) > 1


@pytest.mark.parametrize("whole_blocks", [18, 19])
def test_a_short_tail_at_block_18_or_19_is_no_split_of_its_own(whole_blocks):
    """18 or 19 whole blocks and a 1-byte tail: the tail was block 18 (validation) or 19 (test), the whole split."""
    data = bytes(range(256)) * (whole_blocks * BLOCK_BYTES // 256) + b"!"
    corpus = mr.Corpus.from_bytes("tail", data)
    assert len(corpus.splits["test"]) == len(corpus.splits["validation"]) == BLOCK_BYTES
    assert sum(len(v) for v in corpus.splits.values()) == len(data) and corpus.splits["train"][-1] == ord("!")


def test_an_edited_text_file_is_read_again(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_bytes(b"a" * 3 * BLOCK_BYTES)
    first = mr.load_corpus(str(f))
    assert mr.load_corpus(str(f)) is first  # cached while unchanged
    f.write_bytes(b"b" * 4 * BLOCK_BYTES)
    os.utime(f, ns=(1, 1))  # a new modification time even where the clock is coarse
    second = mr.load_corpus(str(f))
    assert second.sha256 != first.sha256 and second.splits["train"][0] == ord("b")


@pytest.mark.parametrize("segments", BAD_SEGMENTS)
def test_bad_schedule_segments_are_named(segments):
    with pytest.raises(ValueError, match="DomainSchedule segment"):
        mr.DomainSchedule(segments)


def test_a_schedule_from_lists_is_a_hashable_tuple():
    s = mr.DomainSchedule([["prose", 100], ["code", np.int64(200)]])
    assert s.segments == (("prose", 100), ("code", 200)) and hash(s) == hash(mr.DomainSchedule(s.segments))


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_a_bad_stream_seed_is_named(seed):
    with pytest.raises(ValueError, match="stream seed must be an integer >= 0"):  # was numpy's, naming no seed
        mr.TokenStream(mr.DomainSchedule.constant("prose"), seed=seed)
