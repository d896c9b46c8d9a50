"""Judge independence from lineage: was the reward model (the judge of the win rate) trained on any
record the policy was trained on?

Every training run writes ``run.json["data"] = {"snapshot_id", "split", "record_ids"}`` (record ids
are content hashes, so they compare across snapshots) and ``parent_run``. The policy's records are
the aligned run's plus those of its ``parent_run`` chain (the SFT run under DPO); the judge's are the
reward run's (plus its own parents', when it was initialised from another run).

``judge_independence(aligned_run_dir, reward_dir, allow)`` returns the report.json record
``{"checked", "independent", "overlap", "policy_records", "judge_records", "allowed", "judge",
"detail", "policy_runs", "judge_runs"}`` and raises ``ValueError`` naming the overlap count and both
runs when they share records, unless ``allow`` (``allow_judge_overlap: true``) is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onbrand.lineage import Run, run_chain

JUDGE_SAW_TRAINING = "judge saw training data"


def _records(chain: list[Run]) -> tuple[set[str], list[str], list[str]]:
    """(record ids, run descriptions, runs without a ``data`` record)."""
    ids: set[str] = set()
    runs, unknown = [], []
    for stage in chain:
        path, run = stage.dir, stage.run
        data = run.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("record_ids"), list):
            unknown.append(str(path))
            continue
        ids |= {str(i) for i in data["record_ids"]}
        runs.append(
            f"{path} ({run.get('kind', '?')}, {data.get('split', '?')} split, {len(data['record_ids'])} records)"
        )
    return ids, runs, unknown


def _unchecked(judge: str, allow: bool, detail: str) -> dict[str, Any]:
    return dict(checked=False, independent=None, overlap=0, policy_records=0, judge_records=0,
                allowed=allow, judge=judge, detail=detail, policy_runs=[], judge_runs=[])  # fmt: skip


def judge_independence(
    aligned_run: str | Path | None, reward: str | Path | None, allow: bool
) -> dict[str, Any]:
    """Compare the policy's training records with the judge's (see the module doc)."""
    judge = str(reward or "")
    if not reward:
        return _unchecked(judge, allow, "no reward run dir (set reward: <reward run dir>): nothing to check")
    if not aligned_run or not (Path(aligned_run) / "run.json").exists():
        return _unchecked(
            judge, allow, f"aligned {aligned_run} is not a training run dir (no run.json): lineage unknown"
        )
    policy_chain, policy_missing = run_chain(aligned_run)
    judge_chain, judge_missing = run_chain(reward)
    if not judge_chain:
        return _unchecked(judge, allow, f"reward {reward} has no run.json: lineage unknown")
    pol, pol_runs, pol_unknown = _records(policy_chain)
    jud, jud_runs, jud_unknown = _records(judge_chain)
    overlap = len(pol & jud)
    gaps = [f"no data record in {p}/run.json" for p in pol_unknown + jud_unknown]
    gaps += [f"parent run {p} not found" for p in policy_missing + judge_missing]
    if overlap and not allow:
        raise ValueError(
            f"judge {reward} was trained on {overlap} record(s) that the policy {aligned_run} (with its parent "
            f"runs) was trained on: train the reward model on the snapshot's judge split (data.train_split=judge), "
            f"or set allow_judge_overlap=true to report anyway (the win rate is then flagged '{JUDGE_SAW_TRAINING}')"
        )
    checked = not (pol_unknown or jud_unknown or policy_missing or judge_missing)
    if overlap:
        detail = f"{JUDGE_SAW_TRAINING}: {overlap} shared record(s), allowed by allow_judge_overlap"
    elif checked:
        detail = f"no shared record: the judge's {len(jud)} records are disjoint from the policy's {len(pol)}"
    else:
        detail = "not fully checked: " + "; ".join(gaps)
    return dict(
        checked=checked, independent=(overlap == 0) if checked else (False if overlap else None),
        overlap=overlap, policy_records=len(pol), judge_records=len(jud), allowed=allow, judge=judge,
        detail=detail, policy_runs=pol_runs, judge_runs=jud_runs,
    )  # fmt: skip
