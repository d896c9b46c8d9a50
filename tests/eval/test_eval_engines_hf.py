"""HF engine: greedy output equals a hand-written greedy loop, adapters are applied, one adapter
per batch, seeded sampling is reproducible."""

from __future__ import annotations

import pytest
import torch

from onbrand.engines import Request, Sampling, get_engine, render_prompt
from onbrand.engines.base import group_by_adapter


@pytest.fixture(scope="module")
def engine(eval_tiny_dir, eval_lora_dir):
    return get_engine("hf", eval_tiny_dir, adapters={"a": eval_lora_dir}, batch_size=3)


def _greedy_loop(model, ids: list[int], steps: int, stops: list[int]) -> list[int]:
    """Oracle: argmax of a full forward pass per step (no cache, no padding)."""
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt in stops:
                break
            out.append(nxt)
            seq.append(nxt)
    return out


def test_greedy_matches_loop_for_base_and_adapter(engine, chats):
    from onbrand.engines.hf import use_adapter

    sampling = Sampling(max_new_tokens=10)
    reqs = [Request(c, adapter=a, id=str(i)) for i, c in enumerate(chats) for a in (None, "a")]
    gens = engine.generate(reqs, sampling)
    assert [g.request_id for g in gens] == [r.id for r in reqs]
    for r, g in zip(reqs, gens):
        with use_adapter(engine.model, r.adapter):
            want = _greedy_loop(engine.model, render_prompt(engine.tokenizer, r.messages), 10, engine.stops)
        assert g.token_ids[0] == want
        assert g.text == engine.tokenizer.decode(want, skip_special_tokens=True)
    base = [g.token_ids[0] for g in gens[0::2]]
    lora = [g.token_ids[0] for g in gens[1::2]]
    assert base != lora, "the adapter changed nothing: it is not applied"


def test_repetition_penalty_matches_ctrl_oracle(engine, chats):
    """Greedy with repetition_penalty = the loop with CTRL's penalty on every token seen so far
    (prompt and output): positive logits divided, negative ones multiplied."""
    from onbrand.engines.hf import use_adapter

    p, steps = 3.0, 24
    ids = render_prompt(engine.tokenizer, chats[0])
    seq, want = list(ids), []
    with torch.no_grad(), use_adapter(engine.model, None):
        for _ in range(steps):
            logits = engine.model(torch.tensor([seq])).logits[0, -1].clone()
            seen = torch.tensor(sorted(set(seq)))
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / p, logits[seen] * p)
            nxt = int(logits.argmax())
            if nxt in engine.stops:
                break
            want.append(nxt)
            seq.append(nxt)
    got = engine.generate([Request(chats[0])], Sampling(max_new_tokens=steps, repetition_penalty=p))
    plain = engine.generate([Request(chats[0])], Sampling(max_new_tokens=steps))
    assert got[0].token_ids[0] == want
    assert got[0].token_ids[0] != plain[0].token_ids[0], "the penalty changed nothing"


def test_sampling_seeded_and_n(engine, chats):
    s = Sampling(max_new_tokens=8, temperature=1.0, top_p=0.9, n=3, seed=7)
    reqs = [Request(c) for c in chats[:2]]
    a = engine.generate(reqs, s)
    b = engine.generate(reqs, s)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert all(len(g.texts) == 3 and len(g.finish_reasons) == 3 for g in a)
    assert a[0].n_tokens == sum(len(t) for t in a[0].token_ids) > 0


def test_bad_inputs(engine, chats):
    with pytest.raises(ValueError, match="unknown adapter"):
        engine.generate([Request(chats[0], adapter="nope")], Sampling())
    with pytest.raises(ValueError, match="n must be 1"):
        Sampling(n=2)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="end with a user turn"):
        Request([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="engine kind"):
        get_engine("tgi")


def test_group_by_adapter_never_mixes():
    reqs = [
        Request([{"role": "user", "content": str(i)}], adapter=a)
        for i, a in enumerate([None, "x", None, "y", "x"])
    ]
    assert group_by_adapter(reqs) == {None: [0, 2], "x": [1, 4], "y": [3]}
