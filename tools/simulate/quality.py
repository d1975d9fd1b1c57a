"""Pass 0 of simulate: dataset quality from the text and a tokenizer alone (no model).

What it measures, and how (each field of QualityReport says the same where it is read):

- list hits: every text field against the harmful-content and assistant-speak phrase lists (wordlists.py, one
  trie-compiled pattern, one pass over all fields lower-cased and joined); each hit names row, line and field.
- lengths in tokens of the training sequence: prompt + response (SFT), or prompt + the longer of chosen and
  rejected (preference: the longer one is what truncation cuts), each field encoded on its own without special
  tokens, plus the tokenizer's special tokens for one sequence. No chat template is applied.
- exact duplicates: rows whose fields are equal after lower-casing and collapsing whitespace runs.
- near duplicates: pairs of rows whose token-id sets (all fields) have Jaccard >= NEAR_JACCARD.
- instruction diversity: mean over all pairs of rows of the Jaccard overlap of their instructions' token-id sets
  (the instruction is the prompt; a row without one, e.g. {text}, contributes the text it trains on).
  Near-paraphrase blocks: connected groups of >= BLOCK_MIN_ROWS rows whose instructions overlap >= BLOCK_JACCARD.

Pairwise work is exact (sparse binary matrix products, in row blocks) up to EXACT_MAX rows; above it the
diversity is a MinHash estimate from per-hash bucket counts (O(n·k), no pair enumerated) with its standard error,
and pairs come from MinHash LSH banding, every candidate verified exactly (no false positive is reported; the
recall per pair is 1 - (1 - J^BAND_ROWS)^BANDS). An empty token set (a field that tokenizes to nothing) overlaps
nothing, itself included (J = 0), in every method.

Findings and their thresholds (shares of rows): any harmful-list hit is critical; assistant-speak warns above 5%;
rows over max_len warn from one, critical above 10%; exact copies warn above 1%; rows in near-duplicate pairs
above 5%; rows in near-paraphrase blocks above 10%; diversity warns above 0.3 and is critical above 0.5. The
overlap is in the tokenizer's ids: with MiniLM's 30k WordPiece vocabulary 40 varied hand-written instructions
score 0.06 and 10 paraphrases 0.73 (the 640-token test BPE: 0.14 and 0.73).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from tools.simulate import similarity
from tools.simulate.dataset import Dataset, Format
from tools.simulate.wordlists import LISTS, LISTS_VERSION, compile_pattern, normalise, phrase_index
from toolserver.contract import ToolError

CAP = 50  # entries listed per kind of flag; counts always cover everything
NEAR_JACCARD = 0.8
BLOCK_JACCARD = 0.5
BLOCK_MIN_ROWS = 5
EXACT_MAX = 2000  # rows up to which pairwise work is exact: ~0.2 s there on the bench machine, growing as n²
BLOCK_EXACT_MAX = 200  # a block's own mean Jaccard is exact up to this many rows, a MinHash estimate above
ENCODE_CHUNK = 4096  # texts encoded at once: the tokenizer's per-text objects (ids, offsets, strings) stay few


FieldName = Literal["prompt", "response", "chosen", "rejected"]
ListName = Literal["harmful", "assistant_speak"]
Method = Literal["exact", "minhash"]
PairMethod = Literal["exact", "minhash-lsh"]


class ListHit(BaseModel):
    """One match of a list phrase in one field of one row."""

    row: int = Field(description="0-based row index")
    line: int = Field(description="1-based line (JSONL) or item (JSON array) of the row")
    field: FieldName
    category: str = Field(description="the phrase's category in its list")
    term: str = Field(description="the list phrase that matched")
    text: str = Field(description="the span as it appears in the row")


class ListScan(BaseModel):
    """Every field of every row against one phrase list (word boundaries, any case, any whitespace run)."""

    list: ListName
    version: str = Field(description="version of the phrase lists (tools/simulate/wordlists.py)")
    phrases: int = Field(description="phrases in this list")
    rows: int = Field(description="rows with at least one hit")
    hits: int = Field(description="matches in all fields (non-overlapping, longest phrase first)")
    rows_by_category: dict[str, int] = Field(description="rows with at least one hit, per category")
    hits_by_field: dict[str, int] = Field(description="matches per field (prompt, response, chosen, rejected)")
    terms: dict[str, int] = Field(description="matches per phrase, most frequent first (at most 50 phrases)")
    flagged: list[ListHit] = Field(
        description="the first 50 hits by row index, each (row, field, phrase) once (counts above cover all)"
    )


class LongRow(BaseModel):
    row: int = Field(description="0-based row index")
    line: int = Field(description="1-based line (JSONL) or item (JSON array) of the row")
    tokens: int = Field(description="the row's length (see Lengths.definition)")
    sequence: Literal["response", "chosen", "rejected"] = Field(description="the sequence that is too long")


class Lengths(BaseModel):
    """Training-sequence lengths in tokens over all rows."""

    definition: str = Field(description="what one row's length counts")
    special_tokens: int = Field(description="special tokens the tokenizer adds to one sequence (counted)")
    min: int
    median: float = Field(description="the middle length (the mean of the two middle ones for an even count)")
    p95: int = Field(description="nearest-rank 95th percentile: the smallest length >= that of 95% of rows")
    max: int
    mean: float
    max_len: int = Field(description="the training run's sequence limit this was checked against")
    over: int = Field(description="rows longer than max_len tokens")
    over_rows: list[LongRow] = Field(description="the first 50 rows over max_len by row index")


class DuplicateGroup(BaseModel):
    size: int = Field(description="rows in the group")
    rows: list[int] = Field(description="its rows by index (the first 50)")


class ExactDuplicates(BaseModel):
    normalisation: str = Field(description="what makes two rows equal")
    groups: int = Field(description="groups of two or more equal rows")
    copies: int = Field(description="rows equal to an earlier row (rows removed by deduplication)")
    listed: list[DuplicateGroup] = Field(description="the first 50 groups by first row")


class NearPair(BaseModel):
    a: int = Field(description="row index (the lower)")
    b: int = Field(description="row index")
    jaccard: float = Field(description="exact token-set Jaccard of the two rows (all fields)")


class NearDuplicates(BaseModel):
    """Pairs of different rows whose token-id sets (all fields) overlap by at least the threshold."""

    threshold: float = Field(description="pairs at or above this token-set Jaccard are near duplicates")
    method: PairMethod = Field(description="exact: all pairs compared; minhash-lsh: LSH candidates verified exactly")
    recall: str = Field(description="chance that a pair at a given Jaccard is found")
    pairs: int = Field(
        description="verified pairs between rows with different normalised text (exact duplicates are collapsed "
        "to their first row first); a lower bound when an LSH bucket was verified as a star"
    )
    rows: int = Field(description="rows in at least one pair")
    listed: list[NearPair] = Field(description="the first 50 pairs by row index")


class ParaphraseBlock(BaseModel):
    """Rows connected through instruction overlaps >= the block threshold (one linked pair at a time)."""

    size: int = Field(description="rows in the block")
    rows: list[int] = Field(description="its rows by index (the first 50)")
    mean_jaccard: float = Field(description="mean pairwise instruction Jaccard inside the block")
    method: str = Field(description="exact, or above 200 rows a MinHash estimate with its standard error")


class Diversity(BaseModel):
    """Instruction diversity as mean pairwise token-set overlap, and the near-paraphrase blocks."""

    measure: str = Field(description="what the score is")
    score: float | None = Field(description="mean pairwise Jaccard; None with fewer than two rows")
    method: Method
    num_perm: int = Field(description="MinHash permutations (0 when exact)")
    stderr: float = Field(
        description="standard error of the estimate, std over hashes / sqrt(k) (0 when exact); on 2,000 synthetic "
        "rows the measured error over 20 permutation sets had RMS 0.0047 against a stated 0.0063"
    )
    pairs: int = Field(description="row pairs the mean is over: n(n-1)/2")
    block_threshold: float = Field(description="instruction Jaccard that links two rows into a block")
    block_min_rows: int = Field(description="smaller connected groups are not reported as blocks")
    block_method: PairMethod = Field(description="how linked pairs were found (as for near duplicates)")
    block_recall: str = Field(description="chance that a linked pair at a given Jaccard is found")
    blocks: int = Field(description="near-paraphrase blocks found")
    rows_in_blocks: int = Field(description="rows in any block")
    listed: list[ParaphraseBlock] = Field(description="the 50 largest blocks")


class QualityReport(BaseModel):
    """Pass 0 of simulate: what the dataset holds, before any model is loaded. Lists are capped (50 entries per
    kind of flag); every count covers all rows."""

    rows: int = Field(description="rows read")
    format: Format
    tokenizer: str = Field(description="the tokenizer's name or path (lengths and token sets are in its tokens)")
    lists_version: str = Field(description="version of the phrase lists scanned with")
    harmful: ListScan
    assistant_speak: ListScan
    lengths: Lengths
    exact_duplicates: ExactDuplicates
    near_duplicates: NearDuplicates
    diversity: Diversity


FIELDS: tuple[FieldName, ...] = ("prompt", "response", "chosen", "rejected")


@dataclass
class _Texts:
    """Every non-empty field of every row, flattened in row order: its row (position in dataset.rows), field
    (index into FIELDS), text, lower-cased text and token count; `tokens` holds all token ids back to back."""

    row: np.ndarray
    field: np.ndarray
    texts: list[str]
    lowered: list[str]
    counts: np.ndarray
    tokens: np.ndarray


def quality_report(
    dataset: Dataset,
    tokenizer: Any,
    max_len: int,
    *,
    exact_max: int = EXACT_MAX,
    seed: int = 0,
    timings: dict[str, float] | None = None,
) -> QualityReport:
    """Pass 0 over every row of `dataset`.

    `tokenizer` is a Hugging Face tokenizer (its Rust backend's batch path is used when it has one);
    `exact_max` is the row count up to which pairwise work is exact (above it: MinHash); `seed` fixes the
    MinHash permutations; `timings`, when given, receives each phase's wall seconds (for the benchmark)."""
    if not dataset.rows:
        raise ToolError(f"dataset {dataset.path} holds no rows", "pass 0 needs at least one row")
    clock = _Clock(timings)
    with clock("tokenize"):
        texts = _tokenize(dataset, tokenizer)
    with clock("lists"):
        harmful, assistant = _scan(dataset, texts)
    with clock("lengths"):
        lengths = _lengths(dataset, texts, tokenizer, max_len)
    with clock("exact_duplicates"):
        exact, first_of = _exact_duplicates(dataset, texts)
    with clock("token_sets"):
        sets = _token_sets(dataset, texts)
    use_exact = len(dataset.rows) <= exact_max
    with clock("minhash"):
        sigs = None if use_exact else _Signatures.of(sets, texts.tokens, seed)
    with clock("diversity"):
        diversity = _diversity(dataset, sets.instruction, None if sigs is None else sigs.instruction)
    with clock("near_duplicates"):
        near = _near_duplicates(dataset, sets.whole, first_of, None if sigs is None else sigs.whole)
    return QualityReport(
        rows=len(dataset.rows),
        format=dataset.format,
        tokenizer=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
        lists_version=LISTS_VERSION,
        harmful=harmful,
        assistant_speak=assistant,
        lengths=lengths,
        exact_duplicates=exact,
        near_duplicates=near,
        diversity=diversity,
    )


class _Clock:
    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.into is not None:
            self.into[phase] = time.perf_counter() - start


# --- tokens and lengths ----------------------------------------------------------------------------------------


def _tokenize(dataset: Dataset, tokenizer: Any) -> _Texts:
    rows, fields, texts = [], [], []
    for pos, row in enumerate(dataset.rows):
        for name, text in row.fields().items():
            rows.append(pos)
            fields.append(FIELDS.index(name))  # type: ignore[arg-type]
            texts.append(text)
    counts, tokens = _encode(tokenizer, texts)
    return _Texts(
        row=np.array(rows, dtype=np.int64),
        field=np.array(fields, dtype=np.int64),
        texts=texts,
        lowered=[t.lower() for t in texts],
        counts=counts,
        tokens=tokens,
    )


def _encode(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token count of each text and all token ids (int32), without special tokens, ENCODE_CHUNK texts at a
    time through the Rust backend's batch path when the tokenizer has one (on a copy of it if the caller left
    truncation or padding switched on, which would change the counts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend = type(backend).from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    counts, tokens = [], []
    for start in range(0, len(texts), ENCODE_CHUNK):
        batch = texts[start : start + ENCODE_CHUNK]
        if backend is None:
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        else:
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            ids = [e.ids for e in encode(batch, add_special_tokens=False)]
        sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        counts.append(sizes)
        tokens.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(sizes.sum())))
    return similarity.concat(counts, np.int64), similarity.concat(tokens, np.int32)


def _lengths(dataset: Dataset, texts: _Texts, tokenizer: Any, max_len: int) -> Lengths:
    n = len(dataset.rows)
    per_field = np.zeros((n, len(FIELDS)), dtype=np.int64)
    per_field[texts.row, texts.field] = texts.counts
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    if dataset.format == "preference":
        target = np.maximum(per_field[:, 2], per_field[:, 3])
        which = np.where(per_field[:, 3] > per_field[:, 2], "rejected", "chosen")
        definition = "prompt + the longer of chosen and rejected, each encoded alone, plus special tokens"
    else:
        target, which = per_field[:, 1], np.full(n, "response")
        definition = "prompt + response, each encoded alone, plus special tokens; no chat template"
    total = per_field[:, 0] + target + special
    ordered = np.sort(total)
    over = np.flatnonzero(total > max_len)
    return Lengths(
        definition=definition,
        special_tokens=special,
        min=int(ordered[0]),
        median=float(np.median(ordered)),
        p95=int(ordered[math.ceil(0.95 * n) - 1]),
        max=int(ordered[-1]),
        mean=round(float(total.mean()), 2),
        max_len=max_len,
        over=len(over),
        over_rows=[
            LongRow(
                row=dataset.rows[p].index,
                line=dataset.rows[p].line,
                tokens=int(total[p]),
                sequence=str(which[p]),  # type: ignore[arg-type]
            )
            for p in over[:CAP]
        ],
    )


# --- phrase lists -----------------------------------------------------------------------------------------------


def _scan(dataset: Dataset, texts: _Texts) -> tuple[ListScan, ListScan]:
    """One pattern for both lists, one pass over every field lower-cased and joined by NUL (a NUL is neither a
    word character nor whitespace, so no phrase spans two fields). The span is reported as written, or
    lower-cased when lower-casing changed the field's length (rare Unicode)."""
    index = phrase_index()
    pattern = compile_pattern(list(index))
    starts = np.zeros(len(texts.lowered) + 1, dtype=np.int64)
    np.cumsum([len(t) + 1 for t in texts.lowered], out=starts[1:])
    hits: dict[str, list[ListHit]] = {name: [] for name in LISTS}
    for m in pattern.finditer("\0" + "\0".join(texts.lowered)):
        f = int(np.searchsorted(starts, m.start(), side="right")) - 1
        a, b = m.start() - int(starts[f]) - 1, m.end() - int(starts[f]) - 1
        original = texts.texts[f]
        term = normalise(m.group())
        name, category = index[term]
        row = dataset.rows[int(texts.row[f])]
        hits[name].append(
            ListHit(
                row=row.index,
                line=row.line,
                field=FIELDS[int(texts.field[f])],
                category=category,
                term=term,
                text=original[a:b] if len(original) == len(texts.lowered[f]) else m.group(),
            )
        )
    return _list_scan("harmful", hits["harmful"]), _list_scan("assistant_speak", hits["assistant_speak"])


def _list_scan(name: ListName, hits: list[ListHit]) -> ListScan:
    by_category: dict[str, set[int]] = defaultdict(set)
    first: dict[tuple[int, str, str], ListHit] = {}
    for h in hits:
        by_category[h.category].add(h.row)
        first.setdefault((h.row, h.field, h.term), h)
    return ListScan(
        list=name,
        version=LISTS_VERSION,
        phrases=sum(len(p) for p in LISTS[name].values()),
        rows=len({h.row for h in hits}),
        hits=len(hits),
        rows_by_category={c: len(r) for c, r in sorted(by_category.items())},
        hits_by_field=dict(Counter(h.field for h in hits)),
        terms=dict(Counter(h.term for h in hits).most_common(CAP)),
        flagged=list(first.values())[:CAP],
    )


# --- exact duplicates and token sets ----------------------------------------------------------------------------

NORMALISATION = (
    "each field lower-cased (str.lower), whitespace runs collapsed to one space, ends stripped; rows are equal "
    "when every field is"
)


def _exact_duplicates(dataset: Dataset, texts: _Texts) -> tuple[ExactDuplicates, np.ndarray]:
    """The groups, and for each row position the position of its group's first row (itself when unique)."""
    keys: list[list[tuple[int, str]]] = [[] for _ in dataset.rows]
    for pos, field, low in zip(texts.row.tolist(), texts.field.tolist(), texts.lowered, strict=True):
        text = " ".join(low.split())
        if text:
            keys[pos].append((field, text))
    groups: dict[tuple[tuple[int, str], ...], list[int]] = defaultdict(list)
    for pos, key in enumerate(keys):
        groups[tuple(key)].append(pos)
    first_of = np.arange(len(dataset.rows))
    multi = [g for g in groups.values() if len(g) > 1]
    for g in multi:
        first_of[g] = g[0]
    index = [r.index for r in dataset.rows]
    return (
        ExactDuplicates(
            normalisation=NORMALISATION,
            groups=len(multi),
            copies=sum(len(g) - 1 for g in multi),
            listed=[DuplicateGroup(size=len(g), rows=[index[p] for p in g[:CAP]]) for g in multi[:CAP]],
        ),
        first_of,
    )


@dataclass
class _Sets:
    """Binary row x token-id matrices: each row's instruction tokens, its other fields' tokens, all of them."""

    instruction: sparse.csr_matrix
    rest: sparse.csr_matrix
    whole: sparse.csr_matrix


def _token_sets(dataset: Dataset, texts: _Texts) -> _Sets:
    n = len(dataset.rows)
    has_prompt = np.array([bool(r.prompt.strip()) for r in dataset.rows], dtype=bool)
    fallback = FIELDS.index("response" if dataset.format == "sft" else "chosen")
    is_instr = np.where(has_prompt[texts.row], texts.field == 0, texts.field == fallback)
    width = int(texts.tokens.max(initial=-1)) + 1
    mask = np.repeat(is_instr, texts.counts)
    per_row = [np.bincount(texts.row, weights=texts.counts * m, minlength=n) for m in (is_instr, ~is_instr)]
    instruction = similarity.binary(texts.tokens[mask], per_row[0], width)
    rest = similarity.binary(texts.tokens[~mask], per_row[1], width)
    whole = instruction + rest
    whole.data[:] = 1.0
    return _Sets(instruction, rest, whole)


@dataclass
class _Signatures:
    """(NUM_PERM, n) min-hashes of the instruction sets and of the whole-row sets."""

    instruction: np.ndarray
    whole: np.ndarray

    @classmethod
    def of(cls, sets: _Sets, tokens: np.ndarray, seed: int) -> _Signatures:
        ranks = similarity.ranks(sets.whole.shape[1], tokens, seed)
        instruction = similarity.signatures(sets.instruction, ranks)
        return cls(instruction, np.minimum(instruction, similarity.signatures(sets.rest, ranks)))  # min over a union


# --- diversity, paraphrase blocks, near duplicates -------------------------------------------------------------

DIVERSITY_MEASURE = (
    "mean over all pairs of rows of |A ∩ B| / |A ∪ B|, A and B the sets of token ids of the two rows' instructions "
    "(the prompt; the trained text for a row without one); 0 = no shared tokens, 1 = the same token set everywhere"
)


def _diversity(dataset: Dataset, x: sparse.csr_matrix, sig: np.ndarray | None) -> Diversity:
    n = x.shape[0]
    pairs = n * (n - 1) // 2
    if sig is None:
        total, i, j, _ = similarity.exact_pairs(x, BLOCK_JACCARD)
        score, stderr = (total / pairs if pairs else None), 0.0
    else:
        score, stderr = similarity.minhash_mean(sig)
        i, j, _ = similarity.lsh_pairs(sig, x, np.arange(n), BLOCK_JACCARD)
    blocks = _blocks(n, i, j)
    index = np.array([r.index for r in dataset.rows])
    return Diversity(
        measure=DIVERSITY_MEASURE,
        score=None if score is None else round(score, 4),
        method="exact" if sig is None else "minhash",
        num_perm=0 if sig is None else similarity.NUM_PERM,
        stderr=round(stderr, 4),
        pairs=pairs,
        block_threshold=BLOCK_JACCARD,
        block_min_rows=BLOCK_MIN_ROWS,
        block_method="exact" if sig is None else "minhash-lsh",
        block_recall=similarity.recall(sig is None),
        blocks=len(blocks),
        rows_in_blocks=sum(len(b) for b in blocks),
        listed=[_block(x, sig, rows, index) for rows in blocks[:CAP]],
    )


def _blocks(n: int, i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected groups of >= BLOCK_MIN_ROWS rows under the linked pairs (positions), largest first."""
    graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    big = np.flatnonzero(sizes >= BLOCK_MIN_ROWS)
    big = big[np.argsort(-sizes[big], kind="stable")]
    order = np.argsort(label, kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)))
    return [order[starts[c] : starts[c + 1]] for c in big]


def _block(x: sparse.csr_matrix, sig: np.ndarray | None, rows: np.ndarray, index: np.ndarray) -> ParaphraseBlock:
    m = len(rows)
    if sig is None or m <= BLOCK_EXACT_MAX:  # on the exact path m <= n <= exact_max
        total, *_ = similarity.exact_pairs(x[rows], None)
        mean, method = total / (m * (m - 1) / 2), "exact"
    else:
        mean, err = similarity.minhash_mean(sig[:, rows])
        method = f"minhash (k={similarity.NUM_PERM}, ±{err:.3f})"
    return ParaphraseBlock(size=m, rows=index[rows[:CAP]].tolist(), mean_jaccard=round(mean, 4), method=method)


def _near_duplicates(
    dataset: Dataset, x: sparse.csr_matrix, first_of: np.ndarray, sig: np.ndarray | None
) -> NearDuplicates:
    """Near pairs among distinct rows: each exact-duplicate group is represented by its first row."""
    reps = np.flatnonzero(first_of == np.arange(len(first_of)))
    if sig is None:
        _, i, j, jac = similarity.exact_pairs(x[reps], NEAR_JACCARD)
    else:
        i, j, jac = similarity.lsh_pairs(sig[:, reps], x, reps, NEAR_JACCARD)
    index = np.array([r.index for r in dataset.rows])
    a, b = index[reps[i]], index[reps[j]]
    order = np.lexsort((b, a))[:CAP]
    return NearDuplicates(
        threshold=NEAR_JACCARD,
        method="exact" if sig is None else "minhash-lsh",
        recall=similarity.recall(sig is None),
        pairs=len(a),
        rows=len(np.union1d(a, b)),
        listed=[NearPair(a=int(a[k]), b=int(b[k]), jaccard=round(float(jac[k]), 4)) for k in order],
    )


# --- findings ---------------------------------------------------------------------------------------------------
