"""PPO's losses and the per-token quantities they are built from: pure, stateless functions.

Shapes: ``B`` responses, ``T`` response tokens, ``V`` vocabulary size; ``mask`` (B, T) is 1 on
real response tokens. Losses are token-level means over all real tokens of the batch, and each
returns ``(loss, stats)`` with ``stats`` a dict of plain floats ready to log.

Example:
    >>> logprobs = logprobs_from_logits(policy(input_ids).logits[:, P - 1 : -1], response_ids)
    >>> pg_loss, pg_stats = policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2)
    >>> vf_loss, vf_stats = value_loss(values, old_values, returns, mask, clip=0.2)
    >>> (pg_loss + 0.1 * vf_loss).backward()
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

from alignlab.rl.masked import masked_mean, masked_var


def _full_precision(logits: Tensor) -> Tensor:
    # log-probabilities in half precision make PPO's ratios noisy; upcast before the softmax.
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token under its categorical: ``log_softmax(logits)[tokens]``.

    Computed as ``logits[tokens] - logsumexp(logits)``, which never materialises the (B, T, V)
    log-softmax. Half-precision logits are upcast to float32.

    Args:
        logits: (B, T, V) the logits that predict ``tokens`` (already shifted by one).
        tokens: (B, T) token ids.

    Returns:
        (B, T) log-probabilities.
    """
    logits = _full_precision(logits)
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical at each position: (B, T, V) -> (B, T).

    ``H = -Σ p·log p`` with ``log p = log_softmax(logits)`` (a logsumexp inside, so large logits
    do not overflow); logits of ``-inf`` (banned tokens) contribute 0.
    """
    logp = torch.log_softmax(_full_precision(logits), dim=-1)
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


def masked_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy over the real tokens: logits (B, T, V), mask (B, T) -> scalar."""
    return masked_mean(entropy_from_logits(logits), mask)


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017), to minimise.

    ``ratio = exp(logp - old_logp)``;
    ``loss = masked_mean(max(-A·ratio, -A·clip(ratio, 1-ε, 1+ε)))``.

    Args:
        logprobs: (B, T) log-probabilities of the sampled tokens under the current policy.
        old_logprobs: (B, T) the same under the policy that sampled them (treated as constant).
        advantages: (B, T) usually whitened (treated as constant).
        mask: (B, T).
        clip: ε.

    Returns:
        The scalar loss, and stats: ``clip_fraction`` (share of real tokens where the clipped
        branch is the one taken), ``approx_kl`` (masked mean of ``(ratio - 1) - log ratio``,
        the non-negative k3 estimate of KL(π_old ‖ π)), ``ratio_mean``.
    """
    mask = mask.bool()
    # Padding is zeroed before exp so a garbage log-ratio there can't make a NaN gradient.
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), 0)
    ratio = torch.exp(log_ratio)
    advantages = torch.where(mask, advantages.detach(), 0)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (as in OpenAI baselines' PPO2 and TRL's legacy PPO), to minimise.

    ``v_clip = old_v + clip(v - old_v, -ε, ε)``;
    ``loss = 0.5 · masked_mean(max((v - R)², (v_clip - R)²))``. ``clip=None`` gives the plain
    ``0.5 · masked_mean((v - R)²)``.

    Args:
        values: (B, T) current value predictions.
        old_values: (B, T) predictions at rollout time (treated as constant).
        returns: (B, T) targets R (treated as constant).
        mask: (B, T).
        clip: ε, in the units of the value; ``None`` disables clipping.

    Returns:
        The scalar loss, and stats: ``value_clip_fraction`` (share of real tokens where the
        clipped error is the larger one).
    """
    mask = mask.bool()
    returns = torch.where(mask, returns.detach(), 0)
    values = torch.where(mask, values, 0)
    unclipped = (values - returns).square()
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), {"value_clip_fraction": 0.0}
    old_values = torch.where(mask, old_values.detach(), 0)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped > unclipped).float(), mask).item()}
    return loss, stats


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over real tokens: 1 for perfect values, ≤ 0 for useless ones.

    values, returns, mask: (B, T). NaN when the returns are constant.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


class LossAggregation(StrEnum):
    """How a critic-free loss averages its per-token terms over a batch of responses."""

    TOKEN_MEAN = "token_mean"  # Σ over all tokens / number of tokens (DAPO; TRL's "dapo")
    SEQUENCE_MEAN = "sequence_mean"  # mean over responses of each response's token mean (GRPO)
    CONSTANT = "constant"  # Σ over all tokens / (B · max_new_tokens) (Dr. GRPO)


class ImportanceSampling(StrEnum):
    """Where the ratio π/π_old is taken: per token (PPO, GRPO) or per sequence (GSPO)."""

    TOKEN = "token"
    SEQUENCE = "sequence"  # exp(mean_t log ratio) for every token of a response (Zheng et al. 2025)


def aggregate(per_token: Tensor, mask: Tensor, how: LossAggregation | str, max_tokens: int = 0) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar (see :class:`LossAggregation`).

    ``max_tokens`` is the constant divisor per response of ``constant`` (the generation budget);
    0 means the padded width T.
    """
    mask = mask.to(per_token.dtype)
    if how == LossAggregation.TOKEN_MEAN:
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
    if how == LossAggregation.SEQUENCE_MEAN:
        return ((per_token * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()
    if how == LossAggregation.CONSTANT:
        return (per_token * mask).sum() / (per_token.shape[0] * (max_tokens or per_token.shape[1]))
    raise ValueError(f"unknown loss aggregation {how!r}; choose one of {[a.value for a in LossAggregation]}")


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    importance_sampling: ImportanceSampling | str = ImportanceSampling.TOKEN,
    aggregation: LossAggregation | str = LossAggregation.TOKEN_MEAN,
    max_tokens: int = 0,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The critic-free clipped surrogate (GRPO, DAPO, Dr. GRPO, GSPO), to minimise.

    Per token: ``-min(ratio·A, clip(ratio, 1 - clip_low, 1 + clip_high)·A) + β·k3``, with
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (the per-token KL estimate of DeepSeekMath's GRPO),
    then reduced by ``aggregation``. DAPO's clip-higher is ``clip_high > clip_low``.

    Args:
        logprobs: (B, T) log π of the sampled tokens (with gradient).
        old_logprobs: (B, T) the same under the sampling policy (constant).
        advantages: (B,) one per response (constant), or (B, T).
        mask: (B, T) 1 on the tokens that count.
        clip_low, clip_high: the ratio's lower and upper clip ranges.
        importance_sampling: ``token`` ratios, or GSPO's ``sequence`` ratio
            ``exp(mean_t (logp - old))`` shared by a response's tokens.
        aggregation: see :class:`LossAggregation`; ``max_tokens`` for ``constant``.
        ref_logprobs: (B, T) under the frozen reference; needed when ``kl_coef`` > 0.
        kl_coef: β of the k3 KL term (0 = none).

    Returns:
        The scalar loss, and stats: ``clip_fraction_low`` / ``clip_fraction_high`` (share of
        tokens where the lower / upper clip binds), ``ratio_mean``, ``kl_term`` (mean k3 of the
        loss's KL term, 0 without one).
    """
    maskb = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    advantages = torch.where(maskb, advantages.detach(), 0)
    log_ratio = torch.where(maskb, logprobs - old_logprobs.detach(), 0)
    if importance_sampling == ImportanceSampling.SEQUENCE:
        per_seq = log_ratio.sum(1, keepdim=True) / maskb.sum(1, keepdim=True).clamp_min(1)
        log_ratio = torch.where(maskb, per_seq.expand_as(log_ratio), 0)
    elif importance_sampling != ImportanceSampling.TOKEN:
        raise ValueError(f"unknown importance_sampling {importance_sampling!r}; choose token or sequence")
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    kl = torch.zeros((), device=logprobs.device)
    if kl_coef:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        delta = torch.where(maskb, ref_logprobs.detach() - logprobs, 0)
        k3 = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * k3
        kl = masked_mean(k3.detach(), maskb)
    loss = aggregate(per_token, maskb, aggregation, max_tokens)
    with torch.no_grad():
        low = (ratio < 1.0 - clip_low) & (advantages < 0)
        high = (ratio > 1.0 + clip_high) & (advantages > 0)
        stats = {
            "clip_fraction_low": masked_mean(low.float(), maskb).item(),
            "clip_fraction_high": masked_mean(high.float(), maskb).item(),
            "ratio_mean": masked_mean(ratio, maskb).item(),
            "kl_term": float(kl),
        }
    return loss, stats
