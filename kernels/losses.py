"""The DPO family of preference losses over per-sequence log-probs, with TRL 1.x semantics.

Inputs are per-pair (B,) tensors: summed completion log-probs of the policy and reference for the
chosen and rejected responses, and completion token counts. TRL is the oracle (tests call its own
code): ``trl/trainer/dpo_trainer.py`` ``DPOTrainer._compute_loss`` (sigmoid, hinge, ipo, robust,
sigmoid_norm, and the "sft" term that makes RPO), ``trl/experimental/cpo/cpo_trainer.py``
``CPOTrainer.cpo_loss`` (simpo) and ``trl/experimental/orpo/orpo_trainer.py``
``ORPOTrainer.odds_ratio_loss`` (orpo). With Δ = (π_c - ref_c) - (π_r - ref_r), β = ``beta``:

===============  ==========================================================================  =====
loss_type        per-pair loss                                                               paper
===============  ==========================================================================  =====
sigmoid          -log σ(β Δ)                                                                  DPO, arXiv 2305.18290
hinge            relu(1 - β Δ)                                                                SLiC, arXiv 2305.10425
ipo              (Δ_c/n_c - Δ_r/n_r - 1/(2β))²  (per-token averaged log-ratios)               IPO, arXiv 2310.12036
robust           (-(1-ε) log σ(βΔ) + ε log σ(-βΔ)) / (1 - 2ε)                                 rDPO, arXiv 2403.00409
sigmoid_norm     -log σ(β (Δ_c/n_c - Δ_r/n_r))                                                TRL length-normalised DPO
simpo            -(1-ε) log σ(β(ā_c - ā_r) - γ) - ε log σ(-(β(ā_c - ā_r) - γ)), ā = logp/n  SimPO, arXiv 2405.14734
orpo             -β log σ(log odds(ā_c) - log odds(ā_r)), odds(p) = p / (1 - p)             ORPO, arXiv 2403.07691
===============  ==========================================================================  =====

``loss = mean(per-pair) + nll_weight * NLL``. NLL is the chosen token-mean NLL; by default
``sum(-π_c) / sum(n_c)`` (TRL's "sft" loss over chosen completion tokens), or ``policy_chosen_nll``
when given (ORPO in TRL takes the NLL over prompt + response). ``nll_weight=None`` means TRL's
default: 1.0 for orpo, 0.0 otherwise (RPO: ``loss_type=["sigmoid","sft"]``, ``loss_weights=[1, w]``
is ``nll_weight=w``; CPO's ``cpo_alpha`` is ``nll_weight`` for simpo).

Rewards (detached, (B,)): β·(π - ref) for the DPO family; β·ā for simpo/orpo (reference-free).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossSpec:
    """One preference loss: whether it needs a reference model, whether it needs per-sequence token
    counts (length-normalised losses), and its NLL-term weight when the config leaves it unset."""

    reference_free: bool = False
    needs_counts: bool = False
    default_nll_weight: float = 0.0
    label_smoothing: bool = False  # uses ``label_smoothing`` (ε)


# The one list of preference losses (config validation, the fused kernel and the tests derive from it).
LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(),
    "ipo": LossSpec(needs_counts=True),
    "hinge": LossSpec(),
    "robust": LossSpec(label_smoothing=True),
    "sigmoid_norm": LossSpec(needs_counts=True),
    "simpo": LossSpec(reference_free=True, needs_counts=True, label_smoothing=True),
    "orpo": LossSpec(reference_free=True, needs_counts=True, default_nll_weight=1.0),  # TRL's ORPO
}
LOSS_TYPES = tuple(LOSSES)
REFERENCE_FREE = tuple(name for name, spec in LOSSES.items() if spec.reference_free)


def loss_spec(loss_type: str) -> LossSpec:
    if loss_type not in LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {', '.join(LOSS_TYPES)}")
    return LOSSES[loss_type]


def nll_weight_for(loss_type: str, nll_weight: float | None) -> float:
    """The NLL-term weight: the configured one, else the loss's default."""
    return loss_spec(loss_type).default_nll_weight if nll_weight is None else nll_weight


@dataclass
class PreferenceLossOutput:
    """loss: scalar (differentiable). chosen_rewards, rejected_rewards, margins, accuracies: (B,),
    detached (accuracies are 1.0 where chosen_reward > rejected_reward). nll: the NLL term (detached)
    or None. extras: loss-specific detached metrics (orpo: log_odds_ratio, log_odds_chosen)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracies: torch.Tensor
    nll: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def accuracy(self) -> torch.Tensor:
        """Mean reward accuracy over the batch (scalar)."""
        return self.accuracies.mean()

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """TRL-named scalar metrics: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins."""
        out = {
            f"{prefix}rewards/chosen": self.chosen_rewards.mean().item(),
            f"{prefix}rewards/rejected": self.rejected_rewards.mean().item(),
            f"{prefix}rewards/accuracies": self.accuracies.mean().item(),
            f"{prefix}rewards/margins": self.margins.mean().item(),
        }
        if self.nll is not None:
            out[f"{prefix}nll_loss"] = self.nll.item()
        out.update({f"{prefix}{k}": v.mean().item() for k, v in self.extras.items()})
        return out


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (Mächler 2012; as TRL's ORPO)."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _check(loss_type, beta, label_smoothing, tensors, counts_needed, chosen_tokens, rejected_tokens):
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: must be one of {LOSS_TYPES}")
    if not beta > 0:
        raise ValueError(f"beta={beta}: must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing}: must be in [0, 0.5)")
    if label_smoothing and not loss_spec(loss_type).label_smoothing:
        raise ValueError(
            f"label_smoothing={label_smoothing} is only used by 'robust' and 'simpo', not {loss_type!r}"
        )
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1 or any(len(s) != 1 for s in shapes.values()):
        raise ValueError(f"per-pair inputs must all be (B,) tensors; got {shapes}")
    if counts_needed and (chosen_tokens is None or rejected_tokens is None):
        raise ValueError(
            f"loss_type={loss_type!r} needs chosen_tokens and rejected_tokens (completion token counts)"
        )


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    *,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    policy_chosen_nll: torch.Tensor | None = None,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    nll_weight: float | None = None,
) -> PreferenceLossOutput:
    """Preference loss over (B,) per-sequence SUMMED completion log-probs; see the module table.

    ``chosen_tokens``/``rejected_tokens`` (B,) completion token counts are needed by ipo,
    sigmoid_norm, simpo and orpo (averages), and by the default NLL term. ``ref_*`` are required
    except for simpo/orpo. ``policy_chosen_nll``: scalar chosen NLL (token mean) to use instead of
    the default ``sum(-π_c)/sum(n_c)``.
    """
    tensors = dict(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
    counts_needed = loss_spec(loss_type).needs_counts
    _check(loss_type, beta, label_smoothing, tensors, counts_needed, chosen_tokens, rejected_tokens)
    nll_weight = nll_weight_for(loss_type, nll_weight)
    per_pair, chosen_rewards, rejected_rewards, extras = _per_pair(
        loss_type, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_tokens, rejected_tokens, beta, label_smoothing, simpo_gamma,
    )  # fmt: skip
    loss, nll = _add_nll(per_pair.mean(), nll_weight, policy_chosen_nll, policy_chosen_logps, chosen_tokens)
    return PreferenceLossOutput(
        loss=loss,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracies=(chosen_rewards > rejected_rewards).float(),
        nll=nll,
        extras=extras,
    )


def _per_pair(
    loss_type, policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens,
    beta, eps, gamma,
):  # fmt: skip
    """``(per-pair losses, chosen rewards, rejected rewards, extras)`` of ``loss_type``."""
    if loss_type in REFERENCE_FREE:
        return _reference_free(
            loss_type, policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta, eps, gamma
        )
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"loss_type={loss_type!r} needs ref_chosen_logps and ref_rejected_logps")
    chosen_lr = policy_chosen - ref_chosen
    rejected_lr = policy_rejected - ref_rejected
    per_pair = _dpo_family(loss_type, chosen_lr, rejected_lr, chosen_tokens, rejected_tokens, beta, eps)
    return per_pair, beta * chosen_lr.detach(), beta * rejected_lr.detach(), {}


def _add_nll(loss, nll_weight: float, policy_chosen_nll, policy_chosen_logps, chosen_tokens):
    """``(loss + nll_weight * NLL, detached NLL)``; the NLL is None when neither weighted nor given."""
    if not (nll_weight or policy_chosen_nll is not None):
        return loss, None
    if policy_chosen_nll is None:
        if chosen_tokens is None:
            raise ValueError("the NLL term needs chosen_tokens (or pass policy_chosen_nll)")
        # TRL "sft" loss: -mean over all chosen completion tokens of the batch.
        policy_chosen_nll = -policy_chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)
    if nll_weight:
        loss = loss + nll_weight * policy_chosen_nll
    return loss, policy_chosen_nll.detach()


def _dpo_family(loss_type, chosen_lr, rejected_lr, chosen_tokens, rejected_tokens, beta, eps):
    """Per-pair losses of DPOTrainer._compute_loss (f_divergence_type="reverse_kl")."""
    delta = chosen_lr - rejected_lr
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss_type == "hinge":
        return torch.relu(1 - beta * delta)
    if loss_type == "robust":
        clean = -(1 - eps) * F.logsigmoid(beta * delta)
        flipped = -eps * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * eps)
    # ipo and sigmoid_norm average the log-ratios per completion token (counts clamped at 1, as TRL).
    avg_delta = chosen_lr / chosen_tokens.clamp(min=1) - rejected_lr / rejected_tokens.clamp(min=1)
    if loss_type == "ipo":
        return (avg_delta - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * avg_delta)  # sigmoid_norm


def _reference_free(
    loss_type, chosen_logps, rejected_logps, chosen_tokens, rejected_tokens, beta, eps, gamma
):
    """simpo (CPOTrainer.cpo_loss, alpha=0) and orpo (ORPOTrainer.odds_ratio_loss) on average logps.

    TRL divides by the raw token count (no clamp); a zero count is an error here instead of NaN.
    """
    if bool((chosen_tokens <= 0).any()) or bool((rejected_tokens <= 0).any()):
        raise ValueError(f"loss_type={loss_type!r}: every chosen/rejected completion needs >= 1 token")
    avg_c = chosen_logps / chosen_tokens
    avg_r = rejected_logps / rejected_tokens
    if loss_type == "simpo":
        logits = (avg_c - avg_r) - gamma / beta
        per_pair = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
        return per_pair, beta * avg_c.detach(), beta * avg_r.detach(), {}
    # TRL upcasts to fp32 (bf16 log-odds are too coarse); keep fp64 inputs in fp64.
    up = torch.promote_types(avg_c.dtype, torch.float32)
    avg_c, avg_r = avg_c.to(up), avg_r.to(up)
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    ratio = F.logsigmoid(log_odds)
    # TRL: loss = nll - mean(beta * ratio); the sign is folded into the per-pair term here.
    extras = {"log_odds_ratio": ratio.detach().mean(), "log_odds_chosen": log_odds.detach().mean()}
    return -beta * ratio, beta * avg_c.detach(), beta * avg_r.detach(), extras
