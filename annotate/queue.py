"""Loading work for annotators: read prompt / pair files and generate candidate pairs.

Input files are JSONL (one object per line) or, for prompts only, plain text (one prompt a line).

* prompts: ``{"prompt": "text" | [messages...], "channel"?: str}``
* pairs:   ``{"prompt": ..., "candidates": [a, b], "channel"?}`` or a canonical preference record
  (``{"prompt", "chosen", "rejected"}``, see docs/architecture.md); the judged order is hidden
  from annotators either way (left/right is drawn per assignment).

Generated candidates: :func:`generate_pairs` pairs samples (0,1), (2,3), ... (``--strategy all``);
:func:`sample_answers` + :func:`judge_answers` + :func:`route_pairs` score K answers per prompt with
the reward model and the brand rules and send people only the uncertain pairs
(``--strategy uncertain``, rule in ``onbrand.annotate.active``) or a random budget (``random``).

Every bad line is an error naming the file, the line and the field; nothing is skipped silently.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from onbrand.annotate.active import Judged, Selection, candidate_pairs, select
from onbrand.engines import EngineOptions, Request, Sampling, get_engine

ROLES = ("system", "user", "assistant")
MAX_FIELD = 50_000


def _where(path: Path, line: int, field: str) -> str:
    return f"{path}:{line}: {field}"


def _messages(value: Any, path: Path, line: int, field: str) -> list[dict[str, str]]:
    """A prompt as chat messages ending with a user turn (a plain string is one user turn)."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{_where(path, line, field)}: expected a string or a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{_where(path, line, f'{field}[{i}]')}: expected {{'role': one of {ROLES}, 'content': str}}"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"{_where(path, line, field)}: the prompt must end with a user turn")
    if not out[-1]["content"].strip():
        raise ValueError(f"{_where(path, line, field)}: the last user turn is empty")
    return out


def _text(value: Any, path: Path, line: int, field: str) -> str:
    """A candidate: a string, or an assistant message list like canonical records' chosen."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content") if value[0].get("role") == "assistant" else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"{_where(path, line, field)}: expected non-empty text or [{{'role': 'assistant', ...}}]"
        )
    if len(value) > MAX_FIELD:
        raise ValueError(f"{_where(path, line, field)}: {len(value)} characters; the limit is {MAX_FIELD}")
    return value


def _jsonl(path: Path):
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def _channel(obj: dict, path: Path, n: int) -> str | None:
    ch = obj.get("channel")
    if ch is not None and not isinstance(ch, str):
        raise ValueError(f"{_where(path, n, 'channel')}: expected a string")
    return ch


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """``[{"prompt": messages, "channel", "source": {"file", "line"}}]`` from JSONL or text."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: file not found") from None
        rows = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        return [
            {
                "prompt": _messages(t, path, n, "prompt"),
                "channel": None,
                "source": {"file": path.name, "line": n},
            }
            for n, t in rows
        ]
    out = []
    for n, obj in _jsonl(path):
        if "prompt" not in obj:
            raise ValueError(f"{_where(path, n, 'prompt')}: missing (required)")
        out.append(
            {
                "prompt": _messages(obj["prompt"], path, n, "prompt"),
                "channel": _channel(obj, path, n),
                "source": {"file": path.name, "line": n},
            }
        )
    return out


def parse_pair(obj: dict[str, Any], path: str | Path, n: int) -> dict[str, Any]:
    """One pair ``{"prompt", "a", "b", "channel", "source"}`` from a pair object or canonical record."""
    path = Path(path)
    if "prompt" not in obj:
        raise ValueError(f"{_where(path, n, 'prompt')}: missing (required)")
    if "candidates" in obj:
        cands = obj["candidates"]
        if not isinstance(cands, list) or len(cands) != 2:
            raise ValueError(f"{_where(path, n, 'candidates')}: expected a list of exactly 2 candidates")
        a = _text(cands[0], path, n, "candidates[0]")
        b = _text(cands[1], path, n, "candidates[1]")
    elif "chosen" in obj and "rejected" in obj:
        a = _text(obj["chosen"], path, n, "chosen")
        b = _text(obj["rejected"], path, n, "rejected")
    else:
        raise ValueError(f"{path}:{n}: expected 'candidates' [a, b] or 'chosen' + 'rejected'")
    if a == b:
        raise ValueError(f"{path}:{n}: the two candidates are identical; nothing to judge")
    return {
        "prompt": _messages(obj["prompt"], path, n, "prompt"),
        "a": a,
        "b": b,
        "channel": _channel(obj, path, n),
        "source": {"file": path.name, "line": n},
    }


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """``[{"prompt", "a", "b", "channel", "source"}]`` from a JSONL of pairs or canonical records."""
    path = Path(path)
    return [parse_pair(obj, path, n) for n, obj in _jsonl(path)]


def sample_answers(
    prompts: list[dict[str, Any]],
    model: str,
    n: int = 2,
    system_prompt: str | None = None,
    adapter: str | None = None,
    engine: str = "auto",
    max_new_tokens: int = 128,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    options: EngineOptions | None = None,
) -> tuple[list[list[str]], dict[str, Any]]:
    """``n`` sampled answers per prompt (``onbrand.engines``) and the generation metadata.

    The brand card's system prompt is prepended for generation (the model is served with it) but
    not stored in the task, like canonical records.
    """
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n, seed=seed)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    requests = [
        Request(system + p["prompt"], adapter="policy" if adapter else None, id=str(i))
        for i, p in enumerate(prompts)
    ]
    adapters = {"policy": adapter} if adapter else None
    eng = get_engine(engine, base_model=model, adapters=adapters, progress=True, options=options)
    try:
        gens = eng.generate(requests, sampling)
    finally:
        eng.close()
    meta = {"model": str(model), "adapter": adapter, "engine": eng.kind, "sampling": sampling.__dict__}
    return [list(g.texts) for g in gens], meta


def generate_pairs(
    prompts: list[dict[str, Any]],
    model: str,
    n: int = 2,
    system_prompt: str | None = None,
    adapter: str | None = None,
    engine: str = "auto",
    max_new_tokens: int = 128,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    options: EngineOptions | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Sample ``n`` candidates per prompt (:func:`sample_answers`) and pair them up.

    Samples (0,1), (2,3), ... form pairs; a pair of identical texts is not queued and is counted
    in the returned stats.
    """
    if n < 2 or n % 2:
        raise ValueError(f"--n must be an even number >= 2 (samples are paired), got {n}")
    texts, meta = sample_answers(
        prompts, model, n, system_prompt, adapter, engine, max_new_tokens, temperature, top_p, seed, options
    )
    pairs, identical = [], 0
    for p, g in zip(prompts, texts):
        for k in range(0, n, 2):
            a, b = g[k], g[k + 1]
            if a.strip() == b.strip() or not a.strip() or not b.strip():
                identical += 1
                continue
            pairs.append({**p, "a": a, "b": b, "source": {**p["source"], "generated": meta}})
    return pairs, {"prompts": len(prompts), "pairs": len(pairs), "identical_or_empty": identical}


def judge_answers(
    prompts: list[dict[str, Any]],
    texts: list[list[str]],
    meta: dict[str, Any],
    card,
    scorer=None,
    pairing: str = "adjacent",
) -> tuple[list[dict[str, Any]], list[Judged], dict[str, int]]:
    """Candidate pairs of each prompt's answers with both automatic judgements.

    ``card`` (a ``BrandCard``) gives every answer its ``compliance_score`` for the prompt's channel;
    ``scorer`` (``onbrand.scoring.load_scorer``; optional) its reward score, in one batch. Pairs
    come from :func:`onbrand.annotate.active.candidate_pairs` ordered by the reward score (by the
    rule score without a scorer); empty or repeated answers are counted, not paired.
    """
    flat = [(k, t) for k, g in enumerate(texts) for t in g if t.strip()]
    rm_flat = (
        scorer.score([prompts[k]["prompt"] + [{"role": "assistant", "content": t}] for k, t in flat])
        if scorer and flat
        else []
    )
    rm_iter = iter(rm_flat)
    items: list[dict[str, Any]] = []
    judged: list[Judged] = []
    dropped = 0
    for p, g in zip(prompts, texts):
        rules = [card.compliance_score(t, p.get("channel")) for t in g]
        rm = [next(rm_iter) if t.strip() else 0.0 for t in g] if scorer else None
        pairs = candidate_pairs(g, rm if rm is not None else rules, pairing)
        dropped += len(g) - len({t.strip() for t in g if t.strip()})
        for i, j in pairs:
            items.append(
                {**p, "a": g[i], "b": g[j], "brand": card.id, "source": {**p["source"], "generated": meta}}
            )
            judged.append(Judged(None if rm is None else rm[i] - rm[j], rules[i] - rules[j]))
    stats = {"prompts": len(prompts), "samples": sum(len(g) for g in texts), "pairs": len(items),
             "identical_or_empty": dropped}  # fmt: skip
    return items, judged, stats


def route_pairs(
    items: list[dict[str, Any]],
    judged: list[Judged],
    strategy: str,
    margin: float,
    rules_clear: float,
    budget: int | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], Selection]:
    """The pairs for people (their ``source`` records the strategy and both margins) and the
    :class:`~onbrand.annotate.active.Selection`.

    ``uncertain``: :func:`onbrand.annotate.active.select`. ``random`` (the baseline it is
    measured against): ``budget`` pairs drawn uniformly (seeded) from the same candidates, the
    rest left out, nothing synthetic.
    """
    if strategy == "uncertain":
        sel = select(judged, margin, rules_clear, budget)
    elif strategy == "random":
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        cut = len(order) if budget is None else budget
        sel = Selection(human=order[:cut], left_out=order[cut:], reasons={i: "random" for i in order})
    else:
        raise ValueError(f"strategy must be uncertain or random here, got {strategy!r}")
    human = []
    for i in sel.human:
        j = judged[i]
        info = {"strategy": strategy, "rm_margin": j.rm_margin, "rules_margin": j.rules_margin,
                "reason": sel.reasons[i], "rank": len(human)}  # fmt: skip
        item = {k: v for k, v in items[i].items() if k != "brand"}
        human.append({**item, "source": {**item["source"], **info}})
    return human, sel
