"""Fast MinHash signatures over word 3-shingles, indexed with datasketch's ``MinHashLSH``.

datasketch's ``MinHash.update`` hashes every shingle with SHA-1 in Python and builds its
permutations per object (~600 us/row). Here a row's words are hashed once (xxhash), the
shingle hashes are combined with numpy, and all ``num_perm`` hash functions are applied in
one vectorised multiply-shift (~40 us/row). The signature is wrapped in a datasketch
``LeanMinHash`` for the LSH index, so candidates come from datasketch's banding.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash
from datasketch import LeanMinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)
_P1, _P2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_SEED = 1


class _WordHashes(dict):
    """word -> 64-bit xxhash, computed once per distinct word (dict lookups run in C)."""

    def __missing__(self, word: str) -> int:
        if len(self) > 1_000_000:
            self.clear()
        h = self[word] = xxhash.xxh64_intdigest(word.encode())
        return h


class Signer:
    """MinHash signatures (``num_perm`` uint32 values) of a row's text."""

    def __init__(self, num_perm: int = 64, seed: int = _SEED) -> None:
        self._words = _WordHashes()
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)

    def signature(self, messages: list[dict[str, str]]) -> np.ndarray:
        words = _WORD.findall(" ".join(m["content"] for m in messages).lower())
        wh = np.fromiter(map(self._words.__getitem__, words), dtype=np.uint64, count=len(words))
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps on purpose
            if len(wh) >= 3:
                sh = wh[:-2] * _P1 + wh[1:-1] * _P2 + wh[2:]
            elif len(wh):
                sh = np.array([wh.sum() * _P1], dtype=np.uint64)
            else:
                sh = np.zeros(1, dtype=np.uint64)
            mixed = (sh[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return mixed.min(axis=0).astype(np.uint32)

    @staticmethod
    def lean(sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=_SEED, hashvalues=sig, scheme="affine32")

    @staticmethod
    def jaccard(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(a == b)) / len(a)


def new_index(threshold: float, num_perm: int) -> MinHashLSH:
    return MinHashLSH(threshold=threshold, num_perm=num_perm)
