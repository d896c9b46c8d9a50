"""Rewards, advantages, the policy-gradient loss and the completion packing against float64
references written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onbrand.training.rl import RLAlgo, pack_group, policy_loss
from onbrand.training.rl_rewards import RewardComposer, RewardTerm, Rollout, group_advantages


def _rollouts(texts, channel="product_question"):
    return [Rollout([{"role": "user", "content": "q"}], t, len(t.split()), channel) for t in texts]


def test_rl_composed_reward_weights_and_rule_score(rl_brand):
    from onbrand.data.brand import load_brand

    card = load_brand(rl_brand)
    texts = ["Yes! It dims!", "It dims smoothly.", "Wow!! great! yes!"]
    terms = [
        RewardTerm(kind="rules", weight=2.0),
        RewardTerm(kind="regex", pattern="!", weight=-0.5, name="bang"),
        RewardTerm(kind="length", weight=0.1),
    ]
    total, parts = RewardComposer(terms, card).score(_rollouts(texts))
    rules = np.array([card.compliance_score(t, "product_question") for t in texts])
    bang = np.array([t.count("!") for t in texts], dtype=float)
    length = np.array([len(t.split()) for t in texts], dtype=float)
    np.testing.assert_allclose(parts["rules"], rules)
    np.testing.assert_allclose(parts["bang"], bang)
    np.testing.assert_allclose(total, 2.0 * rules - 0.5 * bang + 0.1 * length)
    assert rules[1] == 1.0 and rules[0] == 0.5  # "!...!" breaks 1 of its 2 checks (rule + length)


def test_rl_reward_model_component_uses_the_scorer(monkeypatch):
    """The reward-model term calls RewardScorer(run).score(prompt (no system) + assistant)."""

    seen = {}

    class FakeScorer:
        def __init__(self, run):
            seen["run"] = run

        def score(self, convs):
            seen["convs"] = convs
            return [float(len(c[-1]["content"])) for c in convs]

    from onbrand.training import rl_rewards

    monkeypatch.setattr(rl_rewards, "load_scorer", FakeScorer)
    rolls = [Rollout([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], "abc", 1)]
    total, parts = RewardComposer([RewardTerm(kind="reward_model", run="runs/x", weight=0.5)]).score(rolls)
    assert seen["run"] == "runs/x"
    assert seen["convs"] == [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]]
    assert parts["reward_model"].tolist() == [3.0] and total.tolist() == [1.5]


def test_rl_reward_config_errors():
    with pytest.raises(ValueError, match="needs run"):
        RewardTerm(kind="reward_model")
    with pytest.raises(ValueError, match="invalid regex"):
        RewardTerm(kind="regex", pattern="(")
    with pytest.raises(ValueError, match="unique"):
        RewardComposer([RewardTerm(kind="length"), RewardTerm(kind="length")])
    with pytest.raises(ValueError, match="brand card"):
        RewardComposer([RewardTerm(kind="rules")], card=None)


def test_rl_group_advantages_match_reference():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(3, 4))  # 3 prompts x 4 completions, float64
    grpo = group_advantages(r.reshape(-1), 4, "grpo").reshape(3, 4)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(grpo, want, rtol=1e-12)
    rloo = group_advantages(r.reshape(-1), 4, "rloo").reshape(3, 4)
    loo = np.array([[r[i, j] - np.delete(r[i], j).mean() for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(rloo, loo, rtol=1e-12)
    # the torch path gives the same numbers
    t = group_advantages(torch.tensor(r.reshape(-1)), 4, "grpo").reshape(3, 4)
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(group_advantages(r.reshape(-1), 4, "grpo", scale=False).reshape(3, 4),
                               r - r.mean(1, keepdims=True))  # fmt: skip
    with pytest.raises(ValueError, match="num_generations"):
        group_advantages(r.reshape(-1), 1, "grpo")


@pytest.mark.parametrize("agg,mode", [("token", "loss"), ("sequence", "loss"), ("token", "reward")])
def test_rl_policy_loss_value_and_gradient(agg, mode):
    """loss and d loss / d logp against the formula in float64."""
    torch.manual_seed(0)
    seq = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    logp = (-torch.rand(9, dtype=torch.float64) * 3).requires_grad_()
    ref = logp.detach() + torch.randn(9, dtype=torch.float64) * 0.3
    adv = torch.tensor([1.5, -0.5, -1.0], dtype=torch.float64)
    cfg = RLAlgo(beta=0.2, kl_mode=mode, loss_agg=agg)
    loss, m = policy_loss(logp, ref, seq, adv, 3, cfg)
    loss.backward()
    x = logp.detach().clone().requires_grad_()
    lr = ref - x
    k3 = torch.exp(lr) - lr - 1
    per = -adv[seq] * 1.0 + (0.2 * k3 if mode == "loss" else 0.0)
    if agg == "token":
        want = per.sum() / 9
    else:
        want = torch.stack([per[seq == s].mean() for s in range(3)]).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)  # the ratio is exactly 1
    # gradient: -A from the ratio (d rho / d logp = 1) plus beta * d k3 / d logp, per aggregation
    grad_pg = -adv[seq]
    grad_kl = 0.2 * (1 - torch.exp(ref - logp.detach())) if mode == "loss" else 0.0
    g = grad_pg + grad_kl
    if agg == "token":
        g = g / 9
    else:
        counts = torch.bincount(seq).double()
        g = g / counts[seq] / 3
    torch.testing.assert_close(logp.grad, g, atol=1e-12, rtol=1e-10)
    assert m["kl_k3"] == pytest.approx(k3.mean().item())
    assert m["kl_k3"] > 0


def test_rl_packed_logps_equal_separate_sequences(tiny_model):
    """Two completions per [prompt, y_a, y_b] segment (odd G too) == each sequence on its own."""
    from types import SimpleNamespace

    from onbrand.training.batching import collate

    model = tiny_model
    prompts = [
        SimpleNamespace(id="a", prompt_ids=[1, 5, 9, 14]),
        SimpleNamespace(id="b", prompt_ids=[1, 7, 3]),
    ]
    G = 3
    comps = [[20, 21, 2], [30, 2], [40, 41, 42, 43], [50, 2], [60, 61], [70]]
    pairs, slot = pack_group(prompts, comps, G)
    assert len(pairs) == 4 and slot.tolist() == [0, 1, 2, 4, 5, 6]
    batch = collate(pairs, 64, True, 0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits.flatten(0, 1)  # fmt: skip
    got = torch.log_softmax(logits[batch.src_index], -1).gather(1, batch.targets[:, None])[:, 0]
    inv = torch.full((batch.num_sequences,), -1)
    inv[slot] = torch.arange(len(slot))
    comp_of = inv[batch.seq_id]
    assert (comp_of >= 0).all()
    for k, y in enumerate(comps):
        p = prompts[k // G].prompt_ids
        ids = torch.tensor([p + y])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0], -1)
        want = lp[len(p) - 1 : len(p) + len(y) - 1].gather(1, torch.tensor(y)[:, None])[:, 0]
        torch.testing.assert_close(got[comp_of == k], want, atol=1e-5, rtol=1e-5)


def test_rl_truncated_importance_weights_value_and_gradient():
    """vLLM rollouts: each token's policy gradient is scaled by min(pi / pi_rollout, cap) (float64)."""
    seq = torch.tensor([0, 0, 1, 1, 1])
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.5], dtype=torch.float64, requires_grad=True)
    behaviour = logp.detach() + torch.tensor([0.0, 1.0, -0.2, -2.0, 0.3], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    cfg = RLAlgo(beta=0.0, loss_agg="token")
    loss, m = policy_loss(logp, logp.detach(), seq, adv, 2, cfg, behaviour=behaviour, cap=2.0)
    loss.backward()
    w = torch.exp(logp.detach() - behaviour)  # exp(0, -1, 0.2, 2.0, -0.3): 7.39 is truncated to 2
    assert w.max() > 2.0
    want = -adv[seq] * w.clamp(max=2.0) / 5
    assert loss.item() == pytest.approx(want.sum().item(), abs=1e-12)
    torch.testing.assert_close(logp.grad, want, atol=1e-12, rtol=1e-10)
    assert m["rollout/is_truncated"] == pytest.approx(1 / 5)
    assert m["rollout/logp_gap"] == pytest.approx((0 + 1 + 0.2 + 2 + 0.3) / 5)
    # no correction asked for (cap 0) or no behaviour log-probs: the on-policy loss
    plain, m0 = policy_loss(logp, logp.detach(), seq, adv, 2, cfg, behaviour=behaviour, cap=0.0)
    assert plain.item() == pytest.approx((-adv[seq]).sum().item() / 5) and "rollout/is_weight" not in m0


def test_rl_behaviour_logps_follow_the_packed_order():
    """The engine's per-completion lists land on the right packed tokens, whatever the packing order."""
    from onbrand.training.rl import behaviour_logps
    from onbrand.training.rl_rollouts import Completion

    outs = [Completion([1, 2], "a", "stop", [-0.1, -0.2]), Completion([3], "b", "length", [-0.3]),
            Completion([4, 5, 6], "c", "stop", [-0.4, -0.5, -0.6])]  # fmt: skip
    seq = torch.tensor([2, 0, 2, 1, 0, 2])  # interleaved, each completion's tokens in order
    got = behaviour_logps(outs, seq)
    assert got.tolist() == pytest.approx([-0.4, -0.1, -0.5, -0.3, -0.2, -0.6])
    with pytest.raises(RuntimeError, match="lengths"):
        behaviour_logps(outs, torch.tensor([0, 0, 1, 2, 2]))
    outs[1].behaviour_logps = None  # the live engine gives none: no correction
    assert behaviour_logps(outs, seq) is None
