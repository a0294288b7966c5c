"""Statistics over the real tokens of padded batches: mean, variance, whitening.

Shapes: ``B`` responses, ``T`` the padded response length; ``mask`` (B, T) is 1 on real tokens
and 0 on padding. Padding never reaches a result, whatever values it holds.

Example:
    >>> x, mask = torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1, 1, 0]])
    >>> float(masked_mean(x, mask))
    2.0
"""

from __future__ import annotations

import torch
from torch import Tensor

WHITEN_EPS = 1e-8


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    Args:
        x: any shape, e.g. (B, T).
        mask: same shape as ``x``; 1 = counted.
        dim: reduce over this dimension only (e.g. ``1`` for a per-response mean, (B,));
            ``None`` reduces over everything (a scalar). Where nothing is counted the mean is 0.
    """
    mask = mask.bool()
    total = torch.where(mask, x, 0).sum() if dim is None else torch.where(mask, x, 0).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all positions where ``mask`` is 1 (a scalar).

    ``unbiased`` divides by ``n - 1`` (Bessel's correction) and then needs at least two real
    positions.
    """
    mask = mask.bool()
    n = int(mask.sum())
    if n == 0 or (unbiased and n < 2):
        raise ValueError(
            f"masked_var needs at least {2 if unbiased else 1} unmasked value(s), got {n}; "
            "is the batch made of empty responses?"
        )
    centered = torch.where(mask, x - masked_mean(x, mask), 0)
    return centered.square().sum() / (n - 1 if unbiased else n)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Standardise ``x`` with the mean and unbiased variance of all its real positions.

    Args:
        x: (B, T), e.g. advantages.
        mask: (B, T).
        shift_mean: ``False`` only rescales (the batch mean is added back), as TRL does for
            rewards so their sign survives.

    Returns:
        (B, T): ``(x - mean) / sqrt(var + 1e-8)`` on real positions, 0 on padding.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0)
