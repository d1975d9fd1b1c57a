"""What an agent reads first of pass 0: one finding per check that found something, most severe first, each with
its number and the threshold it crossed; the checks that found nothing share one closing line."""

from __future__ import annotations

from collections.abc import Sequence

from tools.simulate.quality import ListHit, QualityReport
from toolserver.contract import SEVERITY_RANK, Finding, Severity

WARN_ASSISTANT = 0.05  # share of rows with assistant-speak
WARN_EXACT_DUP = 0.01  # share of rows that are copies of an earlier row
WARN_NEAR_DUP = 0.05  # share of rows in a near-duplicate pair
WARN_BLOCKS = 0.10  # share of rows in near-paraphrase blocks
CRITICAL_OVER_LEN = 0.10  # share of rows over max_len (warn from one row)
WARN_DIVERSITY, CRITICAL_DIVERSITY = 0.3, 0.5  # mean pairwise instruction Jaccard


def findings(report: QualityReport) -> list[Finding]:
    """What an agent should read first, most severe first; each says its number and the threshold it crossed.
    Checks that found nothing share one closing info line."""
    parts = [_harmful(report), _assistant(report), _exact(report), _near(report)]
    out = [f for f in parts if isinstance(f, Finding)] + _length_findings(report) + _diversity_findings(report)
    clean = [f for f in parts if isinstance(f, str)]
    if clean:
        out.append(Finding(text="; ".join(clean)))
    return sorted(out, key=lambda f: SEVERITY_RANK[f.severity])


def _harmful(report: QualityReport) -> Finding | str:
    h = report.harmful
    if not h.rows:
        return f"no row matches the harmful-content list {h.version} ({h.phrases} phrases)"
    examples = ", ".join(f"row {x.row} {x.category} '{x.term}'" for x in _first_per_row(h.flagged)[:5])
    return Finding(
        severity="critical",
        text=f"{h.rows} row(s) match the harmful-content list {h.version} ({examples}{', …' if h.rows > 5 else ''}): "
        "keyword matches, read them before training",
    )


def _assistant(report: QualityReport) -> Finding | str:
    s = report.assistant_speak
    if not s.rows:
        return f"no assistant-speak ({s.phrases} phrases)"
    share = s.rows / report.rows
    terms = ", ".join(f"'{t}' ×{c}" for t, c in list(s.terms.items())[:3])
    return Finding(
        severity="warn" if share > WARN_ASSISTANT else "info",
        text=f"{_pct(share)} of rows ({s.rows}) carry assistant-speak (warn above {_pct(WARN_ASSISTANT)}): rows "
        f"{_rows_text([x.row for x in _first_per_row(s.flagged)], s.rows)}; most common {terms}",
    )


def _exact(report: QualityReport) -> Finding | str:
    e = report.exact_duplicates
    if not e.copies:
        return "no exact duplicates"
    share = e.copies / report.rows
    groups = "; ".join(" = ".join(map(str, g.rows[:5])) + (" = …" if g.size > 5 else "") for g in e.listed[:3])
    return Finding(
        severity="warn" if share > WARN_EXACT_DUP else "info",
        text=f"{e.copies} row(s) ({_pct(share)}) are exact copies of an earlier row, in {e.groups} group(s) (case "
        f"and whitespace normalised; warn above {_pct(WARN_EXACT_DUP)}): rows {groups}",
    )


def _near(report: QualityReport) -> Finding | str:
    d = report.near_duplicates
    if not d.pairs:
        return f"no near duplicates (token-set Jaccard ≥ {d.threshold}, {d.method})"
    share = d.rows / report.rows
    pairs = ", ".join(f"{p.a} & {p.b} ({p.jaccard:.2f})" for p in d.listed[:3])
    return Finding(
        severity="warn" if share > WARN_NEAR_DUP else "info",
        text=f"{d.pairs} near-duplicate pair(s) over {d.rows} rows ({_pct(share)}; token-set Jaccard ≥ "
        f"{d.threshold}, {d.method}; warn above {_pct(WARN_NEAR_DUP)}): rows {pairs}",
    )


def _length_findings(report: QualityReport) -> list[Finding]:
    n, ln = report.rows, report.lengths
    out = [
        Finding(
            text=f"lengths in tokens ({ln.definition}): min {ln.min}, median {ln.median:g}, p95 {ln.p95}, "
            f"max {ln.max} (max_len {ln.max_len})"
        )
    ]
    if ln.over:
        share = ln.over / n
        longest = max(ln.over_rows, key=lambda r: r.tokens)
        out.append(
            Finding(
                severity="critical" if share > CRITICAL_OVER_LEN else "warn",
                text=f"{ln.over} row(s) ({_pct(share)}) are longer than max_len {ln.max_len} tokens and would be "
                f"truncated (critical above {_pct(CRITICAL_OVER_LEN)}): rows "
                f"{_rows_text([r.row for r in ln.over_rows], ln.over)} (longest listed: row {longest.row}, "
                f"{longest.tokens} tokens)",
            )
        )
    return out


def _diversity_findings(report: QualityReport) -> list[Finding]:
    d, n = report.diversity, report.rows
    out = []
    if d.score is not None:
        how = "exact" if d.method == "exact" else f"MinHash estimate, k={d.num_perm}, ±{d.stderr:.3f} (1 s.e.)"
        severity: Severity = (
            "critical" if d.score > CRITICAL_DIVERSITY else "warn" if d.score > WARN_DIVERSITY else "info"
        )
        out.append(
            Finding(
                severity=severity,
                text=f"instruction diversity: mean pairwise token-set Jaccard {d.score:.3f} over {n} rows ({how}; "
                f"warn above {WARN_DIVERSITY}, red flag above {CRITICAL_DIVERSITY}: near-paraphrases)",
            )
        )
    if d.blocks:
        share = d.rows_in_blocks / n
        shown = "; ".join(
            f"rows {_rows_text(b.rows, b.size)} ({b.size} rows, mean Jaccard {b.mean_jaccard:.2f})"
            for b in d.listed[:3]
        )
        out.append(
            Finding(
                severity="warn" if share > WARN_BLOCKS else "info",
                text=f"{d.rows_in_blocks} rows ({_pct(share)}) sit in {d.blocks} near-paraphrase block(s) "
                f"(instructions linked at Jaccard ≥ {d.block_threshold}, blocks of ≥ {d.block_min_rows}; warn above "
                f"{_pct(WARN_BLOCKS)}): {shown}",
            )
        )
    return out


def _first_per_row(hits: Sequence[ListHit]) -> list[ListHit]:
    seen: dict[int, ListHit] = {}
    for h in hits:
        seen.setdefault(h.row, h)
    return list(seen.values())


def _rows_text(rows: Sequence[int], total: int, limit: int = 10) -> str:
    shown = ", ".join(map(str, rows[:limit]))
    return shown + (f", … ({total - min(limit, len(rows))} more)" if total > min(limit, len(rows)) else "")


def _pct(share: float) -> str:
    return f"{100 * share:.3g}%"
