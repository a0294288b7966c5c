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
