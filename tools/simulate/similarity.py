"""Set similarity for pass 0: token sets as sparse binary rows, their pairwise Jaccard exactly (blocked sparse and
dense products), and MinHash signatures with the mean pairwise agreement from bucket counts and LSH candidate
pairs verified exactly. Pure numpy/scipy: sets in, numbers out."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from scipy import sparse

BANDS, BAND_ROWS = 10, 6  # LSH: a pair at J is a candidate with probability 1 - (1 - J^6)^10 (0.8 -> 0.95)
NUM_PERM = BANDS * BAND_ROWS
BUCKET_ALL_PAIRS = 64  # an LSH bucket larger than this is verified against its first row only (a star)
SIG_CHUNK = 1 << 17  # tokens hashed at once, one hash at a time: 512 KB of uint32, never k x tokens
PAIR_CHUNK = 1 << 15  # candidate pairs verified at once
BLOCK_CELLS = 1 << 21  # pairwise-matrix cells formed at once in the exact path (8 MB per float32 array)
DENSE_DF = 8  # exact path: tokens in over 1/8 of the rows go through a dense (BLAS) product


def binary(tokens: np.ndarray, per_row: np.ndarray, width: int) -> sparse.csr_matrix:
    """CSR straight from the flat tokens (texts come in row order, so each row's tokens are contiguous)."""
    indptr = np.zeros(len(per_row) + 1, dtype=np.int64)
    np.cumsum(per_row.astype(np.int64), out=indptr[1:])
    m = sparse.csr_matrix((np.ones(len(tokens), dtype=np.float32), tokens, indptr), shape=(len(per_row), width))
    m.sum_duplicates()  # sorts each row's ids and merges repeats
    m.data[:] = 1.0
    return m


def concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


# --- pairwise Jaccard: exact, MinHash, LSH ---------------------------------------------------------------------


def exact_pairs(x: sparse.csr_matrix, threshold: float | None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Sum of J over all pairs i < j, and the pairs i < j with J >= threshold (two position arrays and their J).

    Row blocks of about BLOCK_CELLS cells of the upper triangle at a time; intersections are a sparse product over
    the rarer tokens plus a dense one over tokens in more than 1/DENSE_DF of the rows (a token in d rows costs d²
    in a sparse product). float32 holds the counts exactly and decides J >= 0.5 or 0.8 right: p/q with q below
    10^6 differs from 1/2 or 4/5 by at least 1/(5q), far above float32 rounding."""
    n = x.shape[0]
    sizes = np.diff(x.indptr).astype(np.float32)
    common = np.bincount(x.indices, minlength=x.shape[1]) * DENSE_DF > n
    dense = x[:, np.flatnonzero(common)].toarray()
    rare = x[:, np.flatnonzero(~common)].tocsr()
    total, found = 0.0, []
    step = max(1, BLOCK_CELLS // max(n, 1))
    for a in range(0, n, step):
        b = min(n, a + step)
        inter = (rare[a:b] @ rare[a:].T).toarray() + dense[a:b] @ dense[a:].T
        union = sizes[a:b, None] + sizes[None, a:] - inter
        jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        jac[:, : b - a] = np.triu(jac[:, : b - a], 1)
        total += float(jac.sum(dtype=np.float64))
        if threshold is not None:
            i, j = np.nonzero(jac >= threshold)
            found.append((i + a, j + a, jac[i, j]))
    i, j, v = (concat([f[k] for f in found], dt) for k, dt in enumerate((np.int64, np.int64, np.float64)))
    return total, i, j, v


def ranks(width: int, tokens: np.ndarray, seed: int) -> np.ndarray:
    """(NUM_PERM, width): per hash, a uniformly random permutation of the dataset's distinct tokens. Exactly
    min-wise independent, so P[two sets' min-hashes agree] = J with no hash-family bias."""
    present = np.zeros(width, dtype=bool)
    present[tokens] = True
    distinct = int(present.sum())
    rng = np.random.default_rng(seed)
    table = np.full((NUM_PERM, width), distinct, dtype=np.uint32)
    table[:, present] = rng.permuted(np.tile(np.arange(distinct, dtype=np.uint32), (NUM_PERM, 1)), axis=1)
    return table


def signatures(x: sparse.csr_matrix, ranks: np.ndarray) -> np.ndarray:
    """(NUM_PERM, n) min-hash per set, one hash and SIG_CHUNK tokens at a time (memory stays at one chunk per
    hash, never k x tokens). Empty sets get distinct values above every rank: they agree with nothing, as in the
    exact path (J = 0)."""
    n = x.shape[0]
    top = np.uint32(ranks.max(initial=0) + 1)
    sig = np.tile(top + np.arange(n, dtype=np.uint32), (ranks.shape[0], 1))
    nonempty = np.flatnonzero(np.diff(x.indptr) > 0)
    starts = x.indptr[nonempty]
    bounds = np.searchsorted(starts, np.arange(0, x.indptr[-1], SIG_CHUNK), side="left")
    for c0, c1 in itertools.pairwise([*bounds.tolist(), len(nonempty)]):
        if c0 == c1:
            continue
        lo = starts[c0]
        hi = starts[c1] if c1 < len(starts) else x.indptr[-1]
        chunk, offsets = x.indices[lo:hi], starts[c0:c1] - lo
        for t, table in enumerate(ranks):
            sig[t, nonempty[c0:c1]] = np.minimum.reduceat(table.take(chunk), offsets)
    return sig


def minhash_mean(sig: np.ndarray) -> tuple[float, float]:
    """Mean pairwise J and its standard error from bucket counts, no pair enumerated: under hash t the share of
    pairs that agree is D_t = sum_v C(c_tv, 2) / C(n, 2) with c_tv the rows whose min-hash is v; E[D_t] = mean J
    and the k hashes are independent, so the estimate is mean(D_t) with standard error std(D_t) / sqrt(k)."""
    k, n = sig.shape
    pairs = n * (n - 1) / 2
    dense = int(sig.max(initial=0)) < 4 * n  # bincount is O(n + range): use it when the range is small
    shares = np.empty(k)
    for t in range(k):
        counts = (np.bincount(sig[t]) if dense else np.unique(sig[t], return_counts=True)[1]).astype(np.float64)
        shares[t] = float((counts * (counts - 1)).sum() / 2) / pairs
    return float(shares.mean()), float(shares.std(ddof=1) / math.sqrt(k))


def lsh_pairs(
    sig: np.ndarray, x: sparse.csr_matrix, rows: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, positions in `rows`; sig's columns are those rows of x) with J >= threshold, and their J.
    Candidates are rows that share all BAND_ROWS min-hashes of one of BANDS bands, each verified exactly. A
    bucket over BUCKET_ALL_PAIRS rows is verified as a star from its first row: candidates stay near-linear."""
    n = sig.shape[1]
    live = np.flatnonzero(np.diff(x.indptr)[rows] > 0)
    mult = np.random.default_rng(0x5EED).integers(1, 2**63, size=(BAND_ROWS, 1), dtype=np.uint64) | np.uint64(1)
    keys: list[np.ndarray] = []
    for band in range(BANDS):
        h = (sig[band * BAND_ROWS : (band + 1) * BAND_ROWS, live].astype(np.uint64) * mult).sum(axis=0)
        order = np.argsort(h, kind="stable")  # equal keys keep ascending positions
        hs = h[order]
        edges = np.concatenate(([0], np.flatnonzero(hs[1:] != hs[:-1]) + 1, [len(hs)]))
        for r in np.flatnonzero(np.diff(edges) > 1):
            members = live[order[edges[r] : edges[r + 1]]]
            if len(members) <= BUCKET_ALL_PAIRS:
                a, b = np.triu_indices(len(members), 1)
                keys.append(members[a] * n + members[b])
            else:
                keys.append(members[0] * n + members[1:])
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    cand = np.unique(np.concatenate(keys))
    ci, cj = cand // n, cand % n
    jac = pair_jaccard(x, rows[ci], rows[cj])
    keep = jac >= threshold
    return ci[keep], cj[keep], jac[keep]


def pair_jaccard(x: sparse.csr_matrix, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    sizes = np.diff(x.indptr).astype(np.float64)
    out = np.empty(len(i))
    for s in range(0, len(i), PAIR_CHUNK):
        a, b = i[s : s + PAIR_CHUNK], j[s : s + PAIR_CHUNK]
        inter = np.asarray(x[a].multiply(x[b]).sum(axis=1), dtype=np.float64).ravel()
        union = sizes[a] + sizes[b] - inter
        out[s : s + PAIR_CHUNK] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def recall(exact: bool) -> str:
    if exact:
        return "1 (every pair compared)"
    curve = ", ".join(f"J {j}: {1 - (1 - j**BAND_ROWS) ** BANDS:.2f}" for j in (0.5, 0.6, 0.7, 0.8, 0.9))
    return f"1 - (1 - J^{BAND_ROWS})^{BANDS} ({BANDS} bands of {BAND_ROWS} of {NUM_PERM} min-hashes): {curve}"
