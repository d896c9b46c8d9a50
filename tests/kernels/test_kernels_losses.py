"""preference_loss against TRL 1.x's own loss code (the oracle), called in isolation.

* DPO family: ``DPOTrainer._compute_loss`` run on a stand-in trainer whose model returns given
  per-token log-probs (precomputed reference log-probs), so TRL's real loss code computes the loss
  and logs the rewards/margins/accuracies metrics we compare against.
* simpo: ``CPOTrainer.cpo_loss``; orpo: ``ORPOTrainer.odds_ratio_loss`` (unbound, on a namespace).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from onbrand.kernels.losses import LOSS_TYPES, preference_loss

B, T = 6, 13


def _batch(seed: int):
    """Per-token policy logps (2B, T-1) for [chosen; rejected], a completion mask, reference logps."""
    g = torch.Generator().manual_seed(seed)
    completion = torch.zeros(2 * B, T, dtype=torch.long)
    for i in range(2 * B):
        start = int(torch.randint(2, 6, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        completion[i, start:end] = 1
    shift = completion[:, 1:]
    per_token = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * 3 * shift
    ref = -torch.rand(2 * B, generator=g, dtype=torch.float64) * 10 - shift.sum(1)
    return per_token, completion, ref


def _trl_dpo(loss_types, loss_weights, beta, label_smoothing, per_token, completion, ref):
    from trl.trainer.dpo_trainer import DPOTrainer

    per_token = per_token.clone().requires_grad_(True)
    shift = completion[:, 1:]
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.rand_like(per_token),
        mean_logits=torch.rand_like(per_token),
        is_top1=torch.zeros_like(shift, dtype=torch.bool),
    )
    ident = lambda x: x  # noqa: E731
    fake = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=ident, gather=ident),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=loss_types, loss_weights=loss_weights, beta=beta, label_smoothing=label_smoothing,
        use_weighting=False, _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {
        "input_ids": torch.ones(2 * B, T, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    loss = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, return_outputs=False)
    (grad,) = torch.autograd.grad(loss, per_token)
    return loss.detach(), grad, {k: v[-1] for k, v in fake._metrics["train"].items()}


def _ours(loss_type, per_token, completion, ref, **kw):
    per_token = per_token.clone().requires_grad_(True)
    logps = per_token.sum(1)
    counts = completion[:, 1:].sum(1)
    out = preference_loss(
        logps[:B], logps[B:], ref[:B], ref[B:], chosen_tokens=counts[:B], rejected_tokens=counts[B:],
        loss_type=loss_type, **kw,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(out.loss, per_token)
    return out, grad


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo", "robust", "sigmoid_norm"])
@pytest.mark.parametrize("nll_weight", [0.0, 0.7])
def test_dpo_family_matches_trl(loss_type, nll_weight):
    per_token, completion, ref = _batch(seed=len(loss_type))
    beta, eps = (0.3, 0.2) if loss_type == "robust" else (0.3, 0.0)
    types, weights = [loss_type], [1.0]
    if nll_weight:  # RPO: TRL's "sft" loss added with a weight
        types, weights = [loss_type, "sft"], [1.0, nll_weight]
    trl_loss, trl_grad, metrics = _trl_dpo(types, weights, beta, eps, per_token, completion, ref)
    out, grad = _ours(
        loss_type, per_token, completion, ref, beta=beta, label_smoothing=eps, nll_weight=nll_weight
    )
    torch.testing.assert_close(out.loss, trl_loss, rtol=1e-12, atol=1e-12)
    # Only completion positions carry gradient in the real pipeline (masked logps are constant 0).
    shift = completion[:, 1:]
    torch.testing.assert_close(grad * shift, trl_grad * shift, rtol=1e-12, atol=1e-12)
    got = out.metrics()
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert got[key] == pytest.approx(metrics[key], rel=1e-12, abs=1e-12), key
    assert 0.0 < got["rewards/accuracies"] < 1.0  # the batch exercises both outcomes
    assert not out.chosen_rewards.requires_grad and not out.margins.requires_grad


def _avg(per_token, completion):
    counts = completion[:, 1:].sum(1)
    logps = per_token.sum(1)
    return logps, counts


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_simpo_matches_trl_cpo(eps):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    per_token, completion, _ = _batch(seed=11)
    logps, counts = _avg(per_token, completion)
    logps = logps.requires_grad_(True)
    beta, gamma, cpo_alpha = 2.0, 0.8, 0.5
    fake = SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, label_smoothing=eps, loss_type="simpo",
                           accelerator=SimpleNamespace(device=torch.device("cpu")))  # fmt: skip
    avg = logps / counts
    losses, cr, rr = CPOTrainer.cpo_loss(fake, avg[:B], avg[B:])
    nll = -logps[:B].sum() / counts[:B].sum()  # CPO's CrossEntropyLoss over the chosen completion tokens
    trl_loss = losses.mean() + cpo_alpha * nll
    (trl_grad,) = torch.autograd.grad(trl_loss, logps)
    out = preference_loss(logps[:B], logps[B:], chosen_tokens=counts[:B], rejected_tokens=counts[B:],
                          loss_type="simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps,
                          nll_weight=cpo_alpha)  # fmt: skip
    (grad,) = torch.autograd.grad(out.loss, logps)
    torch.testing.assert_close(out.loss, trl_loss.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_rewards, cr.detach())
    torch.testing.assert_close(out.rejected_rewards, rr.detach())


def test_orpo_matches_trl():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    per_token, completion, _ = _batch(seed=5)
    logps, counts = _avg(per_token, completion)
    logps = logps.float().requires_grad_(True)  # TRL's ORPO upcasts to fp32; compare in fp32
    nll = torch.tensor(1.7, requires_grad=True)  # ORPO's NLL is over prompt + response: passed in
    fake = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    avg = logps / counts
    losses, cr, rr, ratio, log_odds = ORPOTrainer.odds_ratio_loss(fake, avg[:B], avg[B:])
    trl_loss = nll - losses.mean()
    trl_grads = torch.autograd.grad(trl_loss, (logps, nll))
    out = preference_loss(logps[:B], logps[B:], chosen_tokens=counts[:B], rejected_tokens=counts[B:],
                          policy_chosen_nll=nll, loss_type="orpo", beta=0.25)  # fmt: skip
    grads = torch.autograd.grad(out.loss, (logps, nll))
    torch.testing.assert_close(out.loss, trl_loss.detach())
    for a, b in zip(grads, trl_grads):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out.chosen_rewards, cr.detach())
    torch.testing.assert_close(out.extras["log_odds_ratio"], ratio.detach())
    torch.testing.assert_close(out.extras["log_odds_chosen"], log_odds.detach())
    assert out.metrics()["nll_loss"] == pytest.approx(1.7)


def test_default_nll_is_trl_sft_term():
    per_token, completion, ref = _batch(seed=3)
    trl_loss, _, _ = _trl_dpo(["sft"], [1.0], 0.1, 0.0, per_token, completion, ref)
    out, _ = _ours("sigmoid", per_token, completion, ref, nll_weight=0.0)
    assert out.nll is None
    out2, _ = _ours("sigmoid", per_token, completion, ref, nll_weight=1.0)
    torch.testing.assert_close(out2.nll, trl_loss)
    torch.testing.assert_close(out2.loss - out.loss, trl_loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="dpo"), "loss_type='dpo'"),
        (dict(beta=0.0), "beta=0.0"),
        (dict(loss_type="robust", label_smoothing=0.5), r"label_smoothing=0.5: must be in \[0, 0.5\)"),
        (dict(label_smoothing=0.1), "only used by"),
        (dict(loss_type="ipo", chosen_tokens=None), "needs chosen_tokens"),
        (dict(ref_chosen_logps=None), "needs ref_chosen_logps"),
        (dict(ref_rejected_logps=torch.zeros(B + 1)), "must all be"),
        (dict(loss_type="simpo", chosen_tokens=torch.zeros(B, dtype=torch.long)), ">= 1 token"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    per_token, completion, ref = _batch(seed=1)
    logps, counts = _avg(per_token, completion)
    args = dict(ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:], chosen_tokens=counts[:B],
                rejected_tokens=counts[B:])  # fmt: skip
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        preference_loss(logps[:B], logps[B:], **args)


def test_every_loss_type_is_differentiable_and_finite():
    per_token, completion, ref = _batch(seed=9)
    for loss_type in LOSS_TYPES:
        out, grad = _ours(loss_type, per_token, completion, ref)
        assert torch.isfinite(out.loss) and grad.abs().sum() > 0, loss_type
