"""Reward-model losses: pairwise Bradley-Terry (with an optional margin) and K-way rankings.

A preference pair is a ranking of K = 2, so one layout serves both. Shapes:

- ``R`` responses in a batch, laid out prompt by prompt, each prompt's responses best first;
- ``G`` prompts, prompt ``g`` with ``K_g >= 2`` responses (``sizes``, with ``sum(sizes) == R``);
- ``P = sum K_g (K_g - 1) / 2`` pairs, in the order :func:`ranking_pairs` lists them.

Each response is scored once (one forward pass over the ``R`` transcripts); the pairwise terms
are formed from those scores, as InstructGPT trains on all ``K(K-1)/2`` comparisons of a prompt
"as a single batch element". Each prompt then weighs the same in the loss, whatever its K.

Example:
    >>> scores = model(input_ids, attention_mask=attention_mask).logits[:, 0]  # (R,)
    >>> loss, stats = ranking_loss(scores, sizes=[3, 2], margin=None, center_coef=0.01)
    >>> loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def ranking_pairs(
    sizes: Sequence[int], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Index every (better, worse) pair of responses laid out prompt by prompt, best first.

    Args:
        sizes: (G,) responses per prompt, each at least 2.

    Returns:
        ``better``, ``worse``, ``prompt``: (P,) long tensors; pair ``p`` compares response
        ``better[p]`` (ranked higher) with ``worse[p]``, both of prompt ``prompt[p]``. Within a
        prompt pairs come in the order ``(0, 1), (0, 2), ..., (1, 2), ...``.

    Raises:
        ValueError: a prompt with fewer than 2 responses.
    """
    better: list[int] = []
    worse: list[int] = []
    prompt: list[int] = []
    start = 0
    for g, k in enumerate(sizes):
        k = int(k)
        if k < 2:
            raise ValueError(f"prompt {g} has {k} response(s); a ranking needs at least 2")
        for i in range(k):
            for j in range(i + 1, k):
                better.append(start + i)
                worse.append(start + j)
                prompt.append(g)
        start += k

    def as_tensor(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return as_tensor(better), as_tensor(worse), as_tensor(prompt)


def pairwise_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | None = None) -> Tensor:
    """Bradley-Terry loss of each pair: ``-log σ(r_chosen - r_rejected - m)``.

    The margin ``m`` (LLaMA-2, Touvron et al. 2023) asks the reward gap to exceed how much better
    the chosen response was rated; ``m = 0`` is InstructGPT's loss.

    Args:
        chosen: (P,) rewards of the preferred responses.
        rejected: (P,) rewards of the other responses.
        margin: (P,) per-pair margins, or None for 0.

    Returns:
        (P,) the loss of each pair (``log 2`` when the two rewards are equal and ``m = 0``).
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff.dtype)
    return -F.logsigmoid(diff)


def centering_penalty(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Reward centring term of each pair, ``(r_chosen + r_rejected)²`` (Eisenstein et al. 2023).

    The Bradley-Terry loss only sees reward differences, so the overall level drifts; this term
    pulls each pair's mean reward towards 0 (the form TRL's ``center_rewards_coefficient`` uses).

    Args:
        chosen, rejected: (P,) rewards.

    Returns:
        (P,) the penalty of each pair.
    """
    return (chosen + rejected).square()


def per_prompt_mean(values: Tensor, prompt: Tensor, n_prompts: int) -> Tensor:
    """Mean of the pair values of each prompt: values (P,), prompt (P,) -> (G,)."""
    sums = torch.zeros(n_prompts, dtype=values.dtype, device=values.device).index_add(0, prompt, values)
    counts = torch.bincount(prompt, minlength=n_prompts).to(values.dtype)
    return sums / counts


def ranking_loss(
    scores: Tensor,
    sizes: Sequence[int],
    margin: Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The reward-model loss of a batch of K-way rankings (pairs are rankings of K = 2).

    ``loss = mean_g [ mean_{pairs p of g} ( -log σ(r_better - r_worse - m_p)
    + center_coef · (r_better + r_worse)² ) ]``: every prompt weighted once, whatever its K
    (InstructGPT, Ouyang et al. 2022, eq. 1), rather than once per pair.

    Args:
        scores: (R,) one reward per response, prompt by prompt, each prompt's best first.
        sizes: (G,) responses per prompt (K_g >= 2); ``sum(sizes) == R``.
        margin: (P,) per-pair margins in :func:`ranking_pairs` order, or None for 0.
        center_coef: weight of the centring term (0 turns it off).

    Returns:
        The scalar loss, and stats: ``accuracy`` (share of pairs ordered right, each pair
        counted once), ``margin_mean`` (mean ``r_better - r_worse`` over pairs),
        ``centering`` (mean centring penalty), ``pairs``.

    Raises:
        ValueError: ``scores`` or ``margin`` of the wrong length.
    """
    if scores.dim() != 1 or scores.shape[0] != sum(int(k) for k in sizes):
        raise ValueError(
            f"scores has shape {tuple(scores.shape)}; expected ({sum(int(k) for k in sizes)},) "
            f"for rankings of sizes {list(sizes)}"
        )
    better, worse, prompt = ranking_pairs(sizes, device=scores.device)
    if margin is not None and margin.shape != better.shape:
        raise ValueError(
            f"margin has shape {tuple(margin.shape)}; expected ({better.shape[0]},), one per pair"
        )
    chosen, rejected = scores[better], scores[worse]  # (P,), (P,)
    terms = pairwise_loss(chosen, rejected, margin)
    penalty = centering_penalty(chosen, rejected)
    if center_coef:
        terms = terms + center_coef * penalty
    loss = per_prompt_mean(terms, prompt, len(sizes)).mean()
    with torch.no_grad():
        gap = chosen - rejected
        stats = {
            "accuracy": (gap > 0).float().mean().item(),
            "margin_mean": gap.mean().item(),
            "centering": penalty.mean().item(),
            "pairs": float(gap.numel()),
        }
    return loss, stats
