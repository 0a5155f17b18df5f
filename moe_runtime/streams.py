"""Byte-level token streams from built-in corpora, user text, and a domain schedule that switches between them.

Built-in corpora need nothing beyond a Python installation:
- `prose`: the English help texts of `pydoc_data.topics`;
- `code`: the Python source files at the top level of the standard library.
Both vary with the Python version, so `Corpus.sha256` goes into every cache key and result.

Splits: each corpus is cut into 4 KiB blocks; block i goes to `test` if i % 20 == 19, `validation` if i % 20 == 18,
else `train`. The splits never share a byte, and the assignment does not depend on the seed.
"""

from __future__ import annotations

import hashlib
import numbers
import pathlib
import sysconfig
from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "validation", "test")
BLOCK_BYTES = 4096
BUILTIN_DOMAINS = ("prose", "code")


@dataclass(frozen=True)
class Corpus:
    """One domain's bytes, split into train / validation / test.

    Attributes:
        name: domain name (`prose`, `code`, or a user name).
        splits: split name -> uint8 array of bytes.
        sha256: hash of the whole corpus, for cache keys.
    """

    name: str
    splits: dict[str, np.ndarray]
    sha256: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Corpus:
        if len(data) < 3 * BLOCK_BYTES:
            raise ValueError(
                f"corpus {name!r} has {len(data)} bytes; at least {3 * BLOCK_BYTES} are needed to make "
                "non-overlapping train, validation and test splits"
            )
        arr = np.frombuffer(data, dtype=np.uint8)
        blocks = [arr[i : i + BLOCK_BYTES] for i in range(0, len(arr), BLOCK_BYTES)]
        parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for i, block in enumerate(blocks):
            split = "test" if i % 20 == 19 else "validation" if i % 20 == 18 else "train"
            parts[split].append(block)
        # A split must hold a whole block: a 12,289-byte file's test split was its 1-byte tail, served over and over.
        # Small corpora have no block 18 or 19, or only a short tail there: that tail goes to train (it is the last
        # block, so the order holds), and validation and test take the last whole blocks instead. A large corpus's
        # splits, which hold whole blocks, are as they were.
        for split in ("test", "validation"):
            if parts[split] and all(len(b) < BLOCK_BYTES for b in parts[split]):
                parts["train"].extend(parts[split])
                parts[split] = []
        for split in ("test", "validation"):
            if not parts[split]:
                whole = max(i for i, b in enumerate(parts["train"]) if len(b) == BLOCK_BYTES)
                parts[split].append(parts["train"].pop(whole))
        splits = {s: np.concatenate(parts[s]) for s in SPLITS}
        return cls(name=name, splits=splits, sha256=hashlib.sha256(data).hexdigest())


def _prose_bytes() -> bytes:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def _code_bytes() -> bytes:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no standard-library .py files found under {stdlib} for the 'code' corpus")
    return b"\n\n".join(f.read_bytes() for f in files)


_CACHE: dict[str, Corpus] = {}


def load_corpus(source: str) -> Corpus:
    """Load a corpus by built-in name (`prose`, `code`) or from a text file or directory path.

    A directory contributes every `*.txt`, `*.md` and `*.py` file under it, sorted by path. Corpora are cached per
    process; a file is read again when its size or modification time changes (a directory is not).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file or directory holds no text, or too little to split.
    """
    source = str(source)
    key = _cache_key(source)
    if key in _CACHE:
        return _CACHE[key]
    if source == "prose":
        corpus = Corpus.from_bytes("prose", _prose_bytes())
    elif source == "code":
        corpus = Corpus.from_bytes("code", _code_bytes())
    else:
        path = pathlib.Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"corpus {source!r} is neither a built-in domain {BUILTIN_DOMAINS} nor an existing file or directory"
            )
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".py") and p.is_file())
            data = b"\n\n".join(p.read_bytes() for p in files)
        else:
            data = path.read_bytes()
        if not data:
            raise ValueError(f"corpus {str(path)!r} is empty")
        corpus = Corpus.from_bytes(path.stem or str(path), data)
    _CACHE[key] = corpus
    return corpus


def _cache_key(source: str) -> tuple:
    """`source`, with a file's size and modification time: a text file edited in a running process (a notebook) is
    read again, and so gets a new `sha256` for the cache keys. A directory is keyed by its path alone."""
    path = pathlib.Path(source).expanduser()
    if source in BUILTIN_DOMAINS or not path.is_file():
        return (source,)
    stat = path.stat()
    return (source, stat.st_size, stat.st_mtime_ns)


def corpus_hash(sources: tuple[str, ...] | list[str]) -> str:
    """A short hash of the named corpora's contents, for cache keys."""
    h = hashlib.sha256()
    for s in sources:
        h.update(load_corpus(s).sha256.encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class DomainSchedule:
    """Which domain the stream serves, in segments of tokens.

    Attributes:
        segments: (domain, tokens) pairs; the last segment's domain continues forever.
    """

    segments: tuple[tuple[str, int], ...] = (("prose", 4096), ("code", 1 << 62))

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("DomainSchedule needs at least one (domain, tokens) segment")
        segments = []
        for segment in self.segments:
            # A flat ("prose", 4096) or a count of 1.5 or "4096" failed later, with messages naming no schedule.
            if not isinstance(segment, (tuple, list)) or len(segment) != 2 or not isinstance(segment[0], str):
                raise ValueError(
                    f"DomainSchedule segments are (domain, tokens) pairs, e.g. (('prose', 4096), ('code', 8192)); "
                    f"got {segment!r} in {self.segments!r}"
                )
            domain, n = segment
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
                raise ValueError(f"DomainSchedule segment ({domain!r}, {n!r}) must have a positive integer token count")
            segments.append((domain, int(n)))
        object.__setattr__(self, "segments", tuple(segments))  # hashable and immutable, as a frozen dataclass's

    @classmethod
    def shift(cls, first: str, then: str, shift_tokens: int) -> DomainSchedule:
        """`first` for `shift_tokens` tokens, then `then` for ever."""
        return cls(((first, shift_tokens), (then, 1 << 62)))

    @classmethod
    def constant(cls, domain: str) -> DomainSchedule:
        return cls(((domain, 1 << 62),))

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for d, _ in self.segments))

    def domain_at(self, position: int) -> str:
        """The domain serving the token at stream `position` (0-based)."""
        end = 0
        for domain, n in self.segments:
            end += n
            if position < end:
                return domain
        return self.segments[-1][0]


class TokenStream:
    """An endless stream of byte tokens following a `DomainSchedule`.

    Each domain is read from its own random start in the chosen split (wrapping around); under the same seed the
    stream is identical. `next(n)` returns n + 1 bytes so that inputs are `out[:-1]` and next-token targets
    `out[1:]`; the following call starts at the last target, so no byte is skipped.
    """

    def __init__(self, schedule: DomainSchedule | None = None, split: str = "train", seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:  # numpy's message names none
            raise ValueError(f"stream seed must be an integer >= 0, got {seed!r}")
        self.schedule = schedule or DomainSchedule()
        self.split = split
        self.seed = seed
        self.corpora = {d: load_corpus(d) for d in self.schedule.domains}
        rng = np.random.default_rng(seed)
        self._offsets = {d: int(rng.integers(0, len(c.splits[split]))) for d, c in self.corpora.items()}
        self._read = {d: 0 for d in self.corpora}  # bytes consumed per domain
        self.position = 0  # tokens served

    def _take(self, domain: str, n: int) -> np.ndarray:
        data = self.corpora[domain].splits[self.split]
        start = (self._offsets[domain] + self._read[domain]) % len(data)
        idx = (start + np.arange(n)) % len(data)
        return data[idx]

    def next(self, num_tokens: int) -> tuple[np.ndarray, list[str]]:
        """The next `num_tokens` positions.

        Returns:
            tokens: uint8 array [num_tokens + 1]; inputs are `tokens[:-1]`, targets `tokens[1:]`.
            domains: the domain of each input position, length num_tokens.
        """
        if num_tokens <= 0:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        domains = [self.schedule.domain_at(self.position + i) for i in range(num_tokens + 1)]
        out = np.empty(num_tokens + 1, dtype=np.uint8)
        i = 0
        while i < num_tokens + 1:
            d = domains[i]
            j = i
            while j < num_tokens + 1 and domains[j] == d:
                j += 1
            out[i:j] = self._take(d, j - i)
            # The final byte is re-served as the next call's first input, so it is not consumed yet.
            self._read[d] += (j - i) - (1 if j == num_tokens + 1 else 0)
            i = j
        self.position += num_tokens
        return out, domains[:num_tokens]
