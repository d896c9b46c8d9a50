"""Data quality report of a snapshot: ``report.md``, ``report.json``, ``lengths.png``.

Figures:

- length bias: share of pairs where chosen is longer than rejected (characters; tokens when the
  snapshot has ``token_lengths.json``), and the median chosen/rejected length ratio. Over 65% is a
  Goodhart warning: a DPO model would learn "longer is better" instead of the brand;
- banned-phrase/claim hits inside *chosen* responses (the data contradicting the brand card);
- openings (first 3 words) that only ever start chosen answers: a feature DPO learns as "the
  brand" whether or not the card asks for it;
- near-duplicates: share of records with another record whose word 3-gram Jaccard similarity
  (normalized prompt + chosen + rejected) is >= 0.8, and the chosen near-twin rate (word 5-gram
  Jaccard > 0.8 between chosen answers; onbrand.data.similarity);
- leakage: the manifest's maximum cross-split similarity per split pair and the closest pairs
  (with short excerpts); warnings when train < 200 pairs or test < 50 prompts;
- per-annotator counts, agreement on pairs judged by several annotators (Cohen's kappa per pair of
  annotators, Krippendorff's alpha overall). A vote is which of the two texts the annotator
  preferred, with the two texts in a fixed (hash) order, so agreement has two real categories;
- channel balance per split and the import/validation counts (duplicates, quarantine reasons).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_json, atomic_write_text, read_json
from onbrand.config import load_config
from onbrand.data.brand import load_brand
from onbrand.data.config import DataConfig
from onbrand.data.leakage import leakage_section, md_leakage, size_warnings
from onbrand.data.leakage import md_escape as _md_escape
from onbrand.data.records import normalize_text
from onbrand.data.similarity import chosen_near_twin_rate, near_duplicate_rate  # noqa: F401 (re-export)
from onbrand.data.similarity import messages_text as _text
from onbrand.data.snapshot import load_snapshot, resolve_input
from onbrand.stats.agreement import agreement_report

GOODHART_SHARE = 0.65
NEAR_DUP_JACCARD = 0.8
OPENING_MIN_COUNT = 10


def length_bias(
    records: list[dict[str, Any]], token_lengths: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Share of pairs with a longer chosen (chars, and tokens when given) and median ratios."""
    out: dict[str, Any] = {"pairs": len(records)}
    if not records:
        return out
    c = [len(_text(r["chosen"])) for r in records]
    rj = [len(_text(r["rejected"])) for r in records]
    out["chosen_longer_share_chars"] = round(sum(x > y for x, y in zip(c, rj)) / len(records), 4)
    out["median_length_ratio_chars"] = round(statistics.median(x / max(1, y) for x, y in zip(c, rj)), 4)
    if token_lengths:
        tl = [token_lengths[r["id"]] for r in records if r["id"] in token_lengths]
        if tl:
            out["chosen_longer_share_tokens"] = round(sum(t[1] > t[2] for t in tl) / len(tl), 4)
            out["median_length_ratio_tokens"] = round(statistics.median(t[1] / max(1, t[2]) for t in tl), 4)
    share = out.get("chosen_longer_share_tokens", out["chosen_longer_share_chars"])
    out["goodhart_warning"] = share > GOODHART_SHARE
    return out


def chosen_only_openings(
    records: list[dict[str, Any]], words: int = 3, min_count: int = OPENING_MIN_COUNT, share: float = 0.95
) -> dict[str, Any]:
    """Openings (first ``words`` words of the last chosen/rejected message, normalized) seen at least
    ``min_count`` times that start the CHOSEN answer in >= ``share`` of their uses. DPO learns such an
    opening as "the brand" and can put it everywhere (it did: "thanks for asking" on complaints).
    Legitimate when the card requires it (an apology); a spurious feature otherwise."""

    def opening(messages) -> str:
        text = normalize_text(messages[-1]["content"]) if messages else ""
        return " ".join(re.sub(r"[^\w']+", "", w) for w in text.split()[:words])

    chosen = Counter(opening(r["chosen"]) for r in records)
    rejected = Counter(opening(r["rejected"]) for r in records)
    flagged = [
        {"opening": o, "chosen": n, "rejected": rejected.get(o, 0)}
        for o, n in chosen.most_common()
        if o and n >= min_count and n / (n + rejected.get(o, 0)) >= share
    ]
    return {"words": words, "min_count": min_count, "share": share, "flagged": flagged[:20]}


def banned_in_chosen(records: list[dict[str, Any]], card) -> dict[str, Any]:
    """Banned phrase/claim hits in chosen texts (each one contradicts the brand card)."""
    hits, by_rule = [], Counter()
    for r in records:
        channel = r.get("channel")
        for chk in card.banned_hits(_text(r["chosen"]), channel):
            by_rule[chk.rule_id] += 1
            hits.append({"id": r["id"], "rule": chk.rule_id, "detail": chk.detail})
    return {"hits": len(hits), "by_rule": dict(sorted(by_rule.items())), "examples": hits[:20]}


def rejected_rule_failures(records: list[dict[str, Any]], card) -> dict[str, Any]:
    """How often rejected texts fail card checks (should be most of them for brand-aligned data)."""
    by_rule, failing = Counter(), 0
    for r in records:
        channel = r.get("channel")
        failed = [c.rule_id for c in card.check(_text(r["rejected"]), channel) if not c.passed]
        failing += bool(failed)
        by_rule.update(failed)
    return {"share_failing": round(failing / max(1, len(records)), 4), "by_rule": dict(by_rule.most_common())}


def annotator_votes(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(pair key, annotator, vote)`` triples; vote "x"/"y" names the preferred text in hash order."""
    triples = []
    for r in records:
        texts = [normalize_text(_text(r["chosen"])), normalize_text(_text(r["rejected"]))]
        order = sorted(texts, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        prompt = normalize_text(_text(r["prompt"]))
        key = hashlib.sha256("\x00".join([prompt, *order]).encode()).hexdigest()
        vote = "x" if order[0] == texts[0] else "y"
        triples += [(key, a, vote) for a in r.get("annotators") or []]
    return triples


def build_report(snapshot: str | Path, card=None) -> tuple[dict[str, Any], dict[str, list], Any]:
    snapshot = Path(snapshot)
    dd, manifest = load_snapshot(snapshot)
    splits = {name: dd[name].to_list() for name in dd}
    every = [r for recs in splits.values() for r in recs]
    tl_path = snapshot / "token_lengths.json"
    token_lengths = read_json(tl_path) if tl_path.exists() else None
    per_annotator = Counter(a for r in every for a in (r.get("annotators") or []))
    rep: dict[str, Any] = {
        "snapshot_id": manifest["snapshot_id"],
        "counts": manifest["counts"],
        "length_bias": {
            name: length_bias(recs, token_lengths) for name, recs in [("all", every), *splits.items()]
        },
        "near_duplicates": near_duplicate_rate(every, NEAR_DUP_JACCARD),
        "chosen_near_twins": chosen_near_twin_rate(every),
        "leakage": leakage_section(manifest, splits),
        "warnings": size_warnings(splits),
        "chosen_only_openings": chosen_only_openings(splits.get("train", every)),
        "annotators": dict(per_annotator.most_common()),
        "agreement": agreement_report(annotator_votes(every)),
        "channel_balance": {
            name: dict(Counter(r.get("channel") or "(none)" for r in recs)) for name, recs in splits.items()
        },
        "import": manifest.get("import", {}),
        "quarantined_by_reason": manifest.get("quarantined_by_reason", {}),
        "tokenization": manifest.get("tokenization"),
    }
    if card is not None:
        unknown = Counter(
            r["channel"] for r in every if r.get("channel") and r["channel"] not in card.channels
        )
        rep["channels_not_in_card"] = dict(unknown)
        rep["banned_in_chosen"] = banned_in_chosen(every, card)
        rep["rejected_rule_failures"] = rejected_rule_failures(every, card)
    return rep, splits, token_lengths


def _plot(path: Path, splits: dict[str, list[dict[str, Any]]], token_lengths) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = [r for recs in splits.values() for r in recs]
    if token_lengths:
        pairs = [token_lengths[r["id"]][1:] for r in every if r["id"] in token_lengths]
        unit = "tokens"
    else:
        pairs = [[len(_text(r["chosen"]).split()), len(_text(r["rejected"]).split())] for r in every]
        unit = "words"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    c, rj = [p[0] for p in pairs], [p[1] for p in pairs]
    bins = 30
    axes[0].hist(c, bins=bins, alpha=0.6, label="chosen")
    axes[0].hist(rj, bins=bins, alpha=0.6, label="rejected")
    axes[0].set_xlabel(f"completion length ({unit})")
    axes[0].set_ylabel("pairs")
    axes[0].legend()
    axes[0].set_title("Completion lengths")
    axes[1].hist([x / max(1, y) for x, y in pairs], bins=bins, color="tab:green")
    axes[1].axvline(1.0, color="k", lw=1)
    axes[1].set_xlabel("chosen / rejected length")
    axes[1].set_title("Length ratio per pair")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _md_title(rep: dict[str, Any]) -> list[str]:
    """Title, split counts and the too-few-examples warnings."""
    lines = [
        "# Data quality report",
        "",
        f"Snapshot `{rep['snapshot_id'][:16]}`: "
        + ", ".join(f"{k} {v['pairs']} pairs" for k, v in rep["counts"].items()),
        "",
    ]
    return lines + [f"> **Warning**: {_md_escape(w)}.\n" for w in rep.get("warnings", [])]


def _md_length(rep: dict[str, Any]) -> list[str]:
    """The length-bias section."""
    lb = rep["length_bias"]["all"]
    share = lb.get("chosen_longer_share_tokens", lb.get("chosen_longer_share_chars", 0.0))
    lines = [
        "## Length bias",
        "",
        f"Chosen is the longer completion in **{share:.1%}** of pairs "
        f"(characters: {lb.get('chosen_longer_share_chars', 0):.1%}; median chosen/rejected length ratio "
        f"{lb.get('median_length_ratio_tokens', lb.get('median_length_ratio_chars', 0)):.2f}).",
        "",
    ]
    if lb.get("goodhart_warning"):
        lines += [
            f"> **Goodhart warning**: chosen is longer in more than {GOODHART_SHARE:.0%} of pairs; a "
            "preference model would learn length instead of the brand.",
            "",
        ]
    lines += ["| split | pairs | chosen longer (tokens) | chosen longer (chars) |", "|---|---|---|---|"]
    for name, v in rep["length_bias"].items():
        tok = v.get("chosen_longer_share_tokens")
        lines.append(
            f"| {name} | {v['pairs']} | {'' if tok is None else f'{tok:.1%}'} | "
            f"{v.get('chosen_longer_share_chars', 0):.1%} |"
        )
    lines += ["", "![length distributions](lengths.png)", ""]
    lines += _md_openings(rep)
    return lines


def _md_openings(rep: dict[str, Any]) -> list[str]:
    op = rep.get("chosen_only_openings") or {}
    if not op.get("flagged"):
        return []
    lines = [
        "## Openings only chosen answers have",
        "",
        f"Openings (first {op['words']} words) that start the chosen answer in at least {op['share']:.0%} "
        f"of their {op['min_count']}+ uses in train. DPO learns them as the brand and may use them "
        "everywhere: fine when the card requires them (an apology), a spurious feature otherwise "
        "(put the same pleasantry on both sides of the pair).",
        "",
        "| opening | in chosen | in rejected |",
        "|---|---|---|",
    ]
    lines += [f"| {_md_escape(f['opening'])} | {f['chosen']} | {f['rejected']} |" for f in op["flagged"]]
    return lines + [""]


def _md_brand(rep: dict[str, Any]) -> list[str]:
    """Brand card checks: banned hits in chosen, rule failures of rejected."""
    if "banned_in_chosen" not in rep:
        return []
    b = rep["banned_in_chosen"]
    lines = [
        "## Brand card checks",
        "",
        f"Banned-phrase/claim hits in **chosen**: **{b['hits']}**"
        + (" (the data contradicts the brand card)" if b["hits"] else "")
        + ".",
        "",
    ]
    for ex in b["examples"]:
        lines.append(f"- `{ex['id'][:12]}` {_md_escape(ex['rule'])}: {_md_escape(ex['detail'])}")
    if rep["channels_not_in_card"]:
        lines += [
            "Channels the brand card does not define (only channel-independent rules checked): "
            + ", ".join(f"{_md_escape(k)} ({v})" for k, v in rep["channels_not_in_card"].items()),
            "",
        ]
    rf = rep["rejected_rule_failures"]
    lines += [
        f"Rejected completions failing at least one card rule: {rf['share_failing']:.1%}.",
        "",
        "| rule | rejected failing |",
        "|---|---|",
    ]
    lines += [f"| {_md_escape(k)} | {v} |" for k, v in rf["by_rule"].items()]
    lines.append("")
    return lines


def _md_duplicates_agreement(rep: dict[str, Any]) -> list[str]:
    """Exact/near duplicates, annotator counts and agreement."""
    nd = rep["near_duplicates"]
    lines = [
        "## Duplicates",
        "",
        f"Exact duplicates removed at import: {rep['import'].get('duplicates', 0)}. Near-duplicates "
        f"(word 3-gram Jaccard >= {nd['threshold']}): {nd['records_with_near_duplicate']} of "
        f"{nd['compared']} records ({nd['rate']:.1%}), {nd['pairs']} pairs.",
        "",
    ]
    tw = rep.get("chosen_near_twins")
    if tw:
        lines += [
            f"Chosen answers with a near-twin among the other chosen answers (word {tw['n']}-gram "
            f"Jaccard > {tw['threshold']}): **{tw['rate']:.1%}** ({tw['records_with_near_twin']} of "
            f"{tw['compared']}). A high rate means a few answer variants recombined: the model can "
            "memorise them, and a test answer may be a train answer.",
            "",
        ]
    lines += ["## Annotators and agreement", "", "| annotator | pairs |", "|---|---|"]
    lines += [f"| {_md_escape(a)} | {n} |" for a, n in rep["annotators"].items()] or ["| (none) | 0 |"]
    ag = rep["agreement"]
    lines += [
        "",
        f"Pairs judged by several annotators: {ag['items_overlapping']}; percent agreement "
        f"{_fmt(ag['percent_agreement'])}; Krippendorff's alpha (nominal) {_fmt(ag['krippendorff_alpha'])}.",
        "",
    ]
    if ag["cohen_kappa"]:
        lines += ["| annotators | shared pairs | Cohen's kappa |", "|---|---|---|"]
        lines += [
            f"| {_md_escape(' / '.join(k['annotators']))} | {k['items']} | {_fmt(k['kappa'])} |"
            for k in ag["cohen_kappa"]
        ]
        lines.append("")
    return lines


def _md_channels_import(rep: dict[str, Any]) -> list[str]:
    """Channel balance per split and the import/quarantine counts."""
    chans = sorted({c for v in rep["channel_balance"].values() for c in v})
    splits = list(rep["channel_balance"])
    lines = [
        "## Channel balance",
        "",
        "| channel | " + " | ".join(splits) + " |",
        "|---" * (len(splits) + 1) + "|",
    ]
    lines += [
        f"| {_md_escape(c)} | " + " | ".join(str(rep["channel_balance"][s].get(c, 0)) for s in splits) + " |"
        for c in chans
    ]
    imp = rep["import"]
    lines += [
        "",
        "## Import and validation",
        "",
        f"Read {imp.get('read', 0)} rows, accepted {imp.get('accepted', 0)}, quarantined "
        f"{imp.get('quarantined', 0)} at import; formats: "
        + ", ".join(f"{k} {v}" for k, v in imp.get("formats", {}).items())
        + ".",
        "",
    ]
    if rep["quarantined_by_reason"]:
        lines += ["| reason (not in the snapshot) | rows |", "|---|---|"]
        lines += [f"| {_md_escape(k)} | {v} |" for k, v in rep["quarantined_by_reason"].items()]
    return lines


def _md_tokenization(rep: dict[str, Any]) -> list[str]:
    """Token-length table and truncation figures."""
    tok = rep.get("tokenization")
    if not tok:
        return []
    t = tok["tokens"]
    lines = [
        "",
        "## Tokenization",
        "",
        f"Tokenizer `{tok['tokenizer']}`, max_length {tok['max_length']}: "
        f"{tok['pairs_exceeding_max_length']} pairs exceed it ({tok['pairs_truncated']} truncated, "
        f"{tok['pairs_dropped_too_long']} dropped whole), {tok['pairs_template_mismatch']} template mismatches.",
        "",
        "| tokens | min | p50 | p95 | max |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['min']} | {v['p50']} | {v['p95']} | {v['max']} |" for k, v in t.items()]
    return lines


def render_markdown(rep: dict[str, Any]) -> str:
    """The report as Markdown (user text is HTML-escaped)."""
    lines: list[str] = []
    for section in (
        _md_title,
        _md_length,
        md_leakage,
        _md_brand,
        _md_duplicates_agreement,
        _md_channels_import,
        _md_tokenization,
    ):
        lines += section(rep)
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def write_report(snapshot: str | Path, out: str | Path, card=None) -> dict[str, Any]:
    """Build and write report.json, report.md and lengths.png into ``out``; returns the report."""
    out = Path(out)
    rep, splits, token_lengths = build_report(snapshot, card)
    out.mkdir(parents=True, exist_ok=True)
    _plot(out / "lengths.png", splits, token_lengths)
    atomic_write_json(out / "report.json", rep)
    atomic_write_text(out / "report.md", render_markdown(rep))
    return rep


def main(argv: list[str] | None = None) -> int:
    """``python -m onbrand.data.report --config configs/data/demo.yaml``."""

    p = argparse.ArgumentParser(description="Data quality report of a snapshot")
    p.add_argument("--config", default="configs/data/demo.yaml")
    p.add_argument("--snapshot", help="snapshot dir (default: the config's out)")
    p.add_argument("--out", help="report dir (default: the config's report_dir or <snapshot>/report)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(DataConfig, args.config, args.overrides)
    snap = args.snapshot or cfg.out
    card = load_brand(resolve_input(cfg.brand)) if cfg.brand else None
    out = args.out or (cfg.report_dir or f"{snap}/report")
    rep = write_report(snap, out, card)
    lb = rep["length_bias"]["all"]
    print(
        f"report -> {out}/report.md: chosen longer in "
        f"{lb.get('chosen_longer_share_tokens', lb.get('chosen_longer_share_chars', 0)):.1%} of pairs"
        + (" (GOODHART WARNING)" if lb.get("goodhart_warning") else "")
        + (f", banned hits in chosen: {rep['banned_in_chosen']['hits']}" if card else "")
        + f", near-duplicates {rep['near_duplicates']['rate']:.1%}"
        + f", chosen near-twins {rep['chosen_near_twins']['rate']:.1%}"
        + "".join(f"\nwarning: {w}" for w in rep["warnings"])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
