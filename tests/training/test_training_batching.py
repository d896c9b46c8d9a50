"""Shared-prefix packing: packed log-probs == separate sequences; masks; TRL-identical tokenization."""

from __future__ import annotations

import pytest
import torch

from onbrand.training.batching import TokenizedPair, collate, tokenize_pair

SYS = [3, 4, 5, 6, 7]
PAIRS = [
    TokenizedPair("a", SYS + [8, 9], [10, 11, 12], [13, 14]),
    TokenizedPair("b", SYS + [21, 22, 23], [24, 25], [26, 27, 28, 29]),
    TokenizedPair("c", SYS + [30], [31], [32, 33, 34]),
]


def separate_logps(model, pairs) -> torch.Tensor:
    """float64 reference: each [prompt, completion] as its own unpadded sequence."""
    out = []
    for p in pairs:
        for comp in (p.chosen, p.rejected):
            ids = torch.tensor([p.prompt + comp])
            logits = model(ids).logits[0, len(p.prompt) - 1 : -1]
            out.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(comp)[:, None]).sum())
    return torch.stack(out)


def packed_logps(model, batch) -> torch.Tensor:
    h = model.model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask.to(model.dtype),
        position_ids=batch.position_ids,
    ).last_hidden_state.flatten(0, 1)
    lp = torch.log_softmax(model.lm_head(h[batch.src_index]), -1).gather(1, batch.targets[:, None])[:, 0]
    return torch.zeros(batch.num_sequences, dtype=lp.dtype).index_add(0, batch.seq_id, lp)


@pytest.mark.parametrize(
    "shared,row_prefix,budget",
    [(True, True, 4096), (True, True, 14), (True, False, 4096), (False, False, 4096)],
)
def test_packed_logps_equal_separate_sequences_float64(tiny_model, shared, row_prefix, budget):
    model = tiny_model.double()
    ref = separate_logps(model, PAIRS)
    batch = collate(PAIRS, budget, shared_prefix=shared, pad_id=2, share_row_prefix=row_prefix)
    got = packed_logps(model, batch)
    assert ref.abs().min() > 1.0  # non-trivial values
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=0)
    if budget < 20:
        assert batch.input_ids.shape[0] > 1  # several rows, padded tail
    assert batch.seq_lengths().tolist() == [n for p in PAIRS for n in (len(p.chosen), len(p.rejected))]


def test_packed_logps_fp32_sdpa(tiny_model):
    ref = separate_logps(tiny_model, PAIRS)
    got = packed_logps(tiny_model, collate(PAIRS, 4096, pad_id=2))
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


def test_shared_prefix_computes_fewer_tokens_and_mask_blocks_chosen():
    shared = collate(PAIRS, 4096, shared_prefix=True)
    plain = collate(PAIRS, 4096, shared_prefix=False)
    two_rows = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in PAIRS)
    assert plain.real_tokens == two_rows
    assert shared.real_tokens == two_rows - sum(len(p.prompt) for p in PAIRS) - 2 * len(SYS)
    m = collate(PAIRS[:1], 4096).attention_mask[0, 0]  # one pair: [P=7 | C=3 | R=2]
    blocked = m < -1e30
    assert blocked[10:12, 7:10].all()  # rejected never sees chosen
    assert not blocked[10:12, :7].any() and not blocked[7:10, :7].any()  # both see the prompt
    assert blocked[torch.ones_like(blocked).triu(1)].all()  # causal


def test_tokenize_pair_matches_trl(tokenizer):
    from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: F401  (TRL importable)

    rec = {
        "id": "x",
        "prompt": [{"role": "user", "content": "Is the Dawn lamp dimmable?"}],
        "chosen": [{"role": "assistant", "content": "Yes, it dims smoothly."}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    pair = tokenize_pair(tokenizer, rec, "You are Toy.", 128)
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are Toy."}, *rec["prompt"], *rec["chosen"]], tokenize=False
    )
    assert tokenizer.decode(pair.prompt + pair.chosen) == full
    assert tokenizer.decode(pair.chosen).endswith("<|im_end|>\n")
    assert "SmolLM" not in tokenizer.decode(pair.prompt)  # the template's default system prompt is gone
    with pytest.raises(ValueError, match="max_length"):
        tokenize_pair(tokenizer, rec, "You are Toy. " * 50, 64)
