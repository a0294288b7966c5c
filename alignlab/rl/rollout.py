"""Rollouts: sample responses from the policy and collect everything PPO trains on, once.

Shapes: ``B`` prompts, ``P`` the padded prompt length (left padding), ``T`` the padded response
length (right padding after each EOS), ``V`` the vocabulary. The sequence a model sees is
``cat(query, response)``, (B, P + T); the logits that predict response token ``t`` sit at position
``P - 1 + t``, and so does the critic's value ``V(s_t)`` of the state before that token.

One rollout costs one ``generate`` call per chunk (KV cache), whose logits give the old
log-probs, then one batched forward pass each of the reference (reference log-probs) and the
critic (values), all under inference mode, and one call of the scorer, whose raw scores
:class:`alignlab.rl.normalization.ScoreShaper` turns into the scores PPO optimises. Nothing here is computed again during the PPO
epochs that train on the rollout.

Example:
    >>> shaper = ScoreShaper(RewardNormalization.RUNNING, clip=5.0)
    >>> rollout, seconds = collect_rollout(policy, tok, queries, prompts, critic=critic,
    ...     scorer=scorer, shaper=shaper, settings=GenerationSettings(max_new_tokens=32))  # doctest: +SKIP

The settings are the PPO stage's (``alignlab.stages.ppo``); rl/ defines none of its own.
    >>> rollout.logprobs.shape == rollout.mask.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from alignlab.rewards import Prompt, Scorer, score_chats
from alignlab.rl.losses import logprobs_from_logits
from alignlab.rl.normalization import ScoreShaper


class Sampling(Protocol):
    """What sampling reads of its settings (the PPO stage's ``generation`` group,
    :class:`alignlab.stages.ppo.GenerationSettings`, documents each)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    batch_size: int


@dataclass
class Rollout:
    """One batch of experience; every tensor on the same device.

    Attributes:
        query: (B, P) prompt token ids, left-padded.
        query_mask: (B, P) 1 on real prompt tokens.
        response: (B, T) sampled token ids; what follows each row's first EOS is padding.
        mask: (B, T) 1 on real response tokens (the EOS included), 0 after it.
        logprobs: (B, T) log π_old of each sampled token (the policy that sampled it).
        ref_logprobs: (B, T) the same under the frozen reference.
        values: (B, T) the critic's V(s_t) at rollout time.
        raw_scores: (B,) what the scorer returned.
        scores: (B,) the scores PPO optimises (see :class:`ScoreShaper`).
        ended: (B,) True where the response stopped at EOS.
        prompts: the B prompts (chats, or strings), as the scorer got them.
        responses: the B responses as text (special tokens stripped).
        sampler_logprobs: (B, T) the log-probs the engine reported for the tokens it sampled
            (the vLLM engine); None with the HF engine, whose ``logprobs`` are the sampler's.
    """

    query: Tensor
    query_mask: Tensor
    response: Tensor
    mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    raw_scores: Tensor
    scores: Tensor
    ended: Tensor
    prompts: list[Prompt]
    responses: list[str]
    sampler_logprobs: Tensor | None = None

    def __len__(self) -> int:
        return self.query.shape[0]

    @property
    def input_ids(self) -> Tensor:
        """(B, P + T) prompt then response."""
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """(B, P + T)."""
        return torch.cat([self.query_mask, self.mask.to(self.query_mask.dtype)], dim=1)

    def select(self, index: Tensor) -> Rollout:
        """The rows ``index`` (a 1-D LongTensor) of every tensor and list."""
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                picked[f.name] = None
            else:
                picked[f.name] = (
                    value[index] if isinstance(value, Tensor) else [value[i] for i in index.tolist()]
                )
        return Rollout(**picked)


# --- the pieces ---------------------------------------------------------------------------------


def response_mask(response: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask of the real tokens of each response: up to and including its first EOS.

    Works when the pad token is the EOS token too (it only looks at the first EOS).

    Args:
        response: (B, T) generated ids.
        eos_ids: token ids that end a response.

    Returns:
        mask (B, T) long, and ended (B,) bool (the row holds an EOS).
    """
    is_eos = torch.isin(response, torch.tensor(list(eos_ids), device=response.device))
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()  # EOS strictly before t
    return (eos_before == 0).long(), is_eos.any(dim=1)


def position_ids(attention_mask: Tensor) -> Tensor:
    """(B, L) positions counted from each row's first real token, as ``generate`` numbers them."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def policy_logits(
    model: Any, input_ids: Tensor, attention_mask: Tensor, response_len: int, temperature: float = 1.0
) -> Tensor:
    """(B, T, V) logits that predict the last ``response_len`` tokens, divided by the temperature.

    Only the T positions ``P - 1 .. P + T - 2`` go through the LM head (``logits_to_keep`` as
    indices), so no (B, T + 1, V) tensor is made and sliced; at temperature 1 the logits are
    returned as they are rather than copied by a division (the most common setting, on the
    training hot path too).
    """
    length = input_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=torch.arange(length - response_len - 1, length - 1, device=input_ids.device),
        use_cache=False,
    )
    return out.logits if temperature == 1.0 else out.logits / temperature


def token_values(critic: Any, input_ids: Tensor, attention_mask: Tensor, response_len: int) -> Tensor:
    """(B, T) the critic's value of the state before each of the last ``response_len`` tokens.

    ``critic`` is a sequence-classification model with one label (a reward model, or a causal
    LM's transformer with a new scalar head); its head is applied at every position instead of
    only the last one. A peft-wrapped critic is unwrapped to reach the transformer and the head.
    """
    model = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise TypeError(f"{type(model).__name__} has no `score` or `classifier` head to use as a value head")
    body = getattr(model, model.base_model_prefix)
    hidden = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
    ).last_hidden_state  # (B, P + T, H)
    return head(hidden[:, -response_len - 1 : -1]).squeeze(-1).float()


@contextmanager
def reference_model(policy: Any, reference: Any | None) -> Iterator[Any]:
    """The reference policy: ``reference`` itself, or ``policy`` with its peft adapter disabled."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter():
        yield policy


def chunks(n: int, size: int) -> list[slice]:
    """Slices covering ``range(n)`` in pieces of ``size``."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


# --- the rollout --------------------------------------------------------------------------------


@torch.inference_mode()
def sample_responses(
    policy: Any,
    query: Tensor,
    query_mask: Tensor,
    settings: Sampling,
    eos_ids: Sequence[int],
    pad_id: int,
) -> Tensor:
    """(B, T) sampled response ids (KV cache, stops at EOS), padded with ``pad_id`` to one width."""
    return sample_with_logprobs(policy, query, query_mask, settings, eos_ids, pad_id, logprobs=False)[0]


@torch.inference_mode()
def sample_with_logprobs(
    policy: Any,
    query: Tensor,
    query_mask: Tensor,
    settings: Sampling,
    eos_ids: Sequence[int],
    pad_id: int,
    *,
    logprobs: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Sampled responses (B, T) and, from the logits ``generate`` computed to sample them, their
    log-probabilities (B, T) at the sampling temperature: the old log-probs of PPO, with no second
    forward pass of the policy (as in TRL). Positions after a row's end hold 0.

    The logits of one generation chunk (chunk × T × V floats) live until its log-probs are taken,
    as the (chunk, T, V) logits of a forward pass would.
    """
    ids, lps = [], []
    for part in chunks(query.shape[0], settings.batch_size):
        out = policy.generate(
            input_ids=query[part],
            attention_mask=query_mask[part],
            max_new_tokens=settings.max_new_tokens,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            eos_token_id=list(eos_ids),
            pad_token_id=pad_id,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=logprobs,
        )
        response = out.sequences[:, query.shape[1] :]
        ids.append(response)
        if logprobs:
            logits = torch.stack(out.logits, dim=1)  # (chunk, T, V), raw: before temperature and top-k/p
            del out
            if settings.temperature != 1.0:
                logits = logits / settings.temperature
            lps.append(logprobs_from_logits(logits, response))
            del logits
    width = max(p.shape[1] for p in ids)
    response = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad_id) for p in ids])
    if not logprobs:
        return response, None
    return response, torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in lps])


def sample_with_engine(
    engine: Any,
    queries: Sequence[Sequence[int]],
    settings: Sampling,
    eos_ids: Sequence[int],
    pad_id: int,
    device: Any,
) -> tuple[Tensor, Tensor]:
    """:func:`sample_with_logprobs` through an engine: (B, T) responses and the engine's log-probs.

    The per-prompt seeds come from torch's generator, so a seeded (or resumed) run samples the
    same responses."""
    from alignlab.models.engines import responses_tensor

    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    sampled = engine.sample(
        queries,
        max_new_tokens=settings.max_new_tokens,
        stop_ids=eos_ids,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        seed=seed,
    )
    response, logprobs = responses_tensor(sampled, pad_id, device)
    assert logprobs is not None
    return response, logprobs


@torch.inference_mode()
def sequence_logprobs(
    model: Any,
    query: Tensor,
    query_mask: Tensor,
    response: Tensor,
    mask: Tensor,
    temperature: float,
    batch_size: int,
) -> Tensor:
    """(B, T) log-probs of ``response`` under ``model`` at ``temperature``, 0 after each end."""
    ids = torch.cat([query, response], dim=1)
    attn = torch.cat([query_mask, mask.to(query_mask.dtype)], dim=1)
    T = response.shape[1]
    parts = []
    for part in chunks(ids.shape[0], batch_size):
        logits = policy_logits(model, ids[part], attn[part], T, temperature)
        parts.append(logprobs_from_logits(logits, response[part]))
        del logits
    return torch.cat(parts) * mask


def logprob_mismatch(rollout: Rollout) -> dict[str, float]:
    """How far the sampler's log-probs are from the trainer's for the same tokens (the vLLM
    engine's; empty for the HF engine, whose log-probs are the trainer's): mean and max
    absolute difference per token, and the k3 estimate of KL(sampler ‖ trainer) per token."""
    if rollout.sampler_logprobs is None:
        return {}
    real = rollout.mask.bool()
    if not real.any():
        return {}
    diff = (rollout.sampler_logprobs - rollout.logprobs)[real]
    log_ratio = -diff  # log π_trainer − log π_sampler on the sampler's tokens
    k3 = (log_ratio.exp() - 1 - log_ratio).mean()
    return {
        "engine/logprob_diff_mean": float(diff.abs().mean()),
        "engine/logprob_diff_max": float(diff.abs().max()),
        "engine/kl_sampler_trainer": float(k3),
    }


@torch.inference_mode()
def rollout_forward(
    policy: Any,
    reference: Any | None,
    critic: Any | None,
    query: Tensor,
    query_mask: Tensor,
    response: Tensor,
    mask: Tensor,
    temperature: float,
    batch_size: int,
    *,
    with_reference: bool = True,
) -> tuple[Tensor, Tensor]:
    """Reference log-probs and values, (B, T) each, in batched inference passes (the old log-probs
    come with the sampling: :func:`sample_with_logprobs`). Without a critic the values are 0;
    with ``with_reference=False`` (a critic-free run with no KL term) so are the reference log-probs."""
    ids = torch.cat([query, response], dim=1)
    attn = torch.cat([query_mask, mask.to(query_mask.dtype)], dim=1)
    T = response.shape[1]
    ref_logprobs, values = [], []
    for part in chunks(ids.shape[0], batch_size):
        if with_reference:
            with reference_model(policy, reference) as ref:
                ref_logits = policy_logits(ref, ids[part], attn[part], T, temperature)
            ref_logprobs.append(logprobs_from_logits(ref_logits, response[part]))
            del ref_logits
        else:
            ref_logprobs.append(torch.zeros(response[part].shape, device=ids.device))
        if critic is not None:
            values.append(token_values(critic, ids[part], attn[part], T))
        else:
            values.append(torch.zeros(response[part].shape, device=ids.device))
    return torch.cat(ref_logprobs), torch.cat(values)


def collect_rollout(
    policy: Any,
    tokenizer: Any,
    queries: Sequence[Sequence[int]],
    prompts: Sequence[Prompt],
    *,
    critic: Any | None,
    scorer: Scorer,
    shaper: ScoreShaper,
    settings: Sampling,
    reference: Any | None = None,
    with_reference: bool = True,
    columns: Sequence[dict[str, Any]] | None = None,
    engine: Any | None = None,
) -> tuple[Rollout, dict[str, float]]:
    """Sample one response per prompt and compute everything PPO needs about it.

    Args:
        policy: the causal LM being trained (unwrapped; a peft model when ``reference`` is None).
        tokenizer: its tokenizer (pad and EOS ids, decoding).
        queries: B prompts as token ids (chat template applied).
        prompts: the same B prompts as chats (or strings), for the scorer.
        critic: the value model (see :func:`token_values`); None: no values (critic-free RL).
        scorer: a reward model scorer (reads every chat turn) or a reward function (reads each
            chat's last user turn); see :func:`alignlab.rewards.score_chats`.
        shaper: turns raw scores into the scores PPO optimises.
        settings: sampling settings.
        reference: the frozen reference policy; None = ``policy`` with its adapter disabled.
        with_reference: False skips the reference pass (its log-probs are 0: no KL is used).
        columns: each prompt record's other fields (``answer``, ...), for reward functions
            that read them.
        engine: a :class:`alignlab.models.engines.VLLMEngine` holding ``policy``'s weights
            (synced by the caller); None samples with ``policy.generate``. With vLLM the old
            log-probs are recomputed by the trainer (one more inference pass) and vLLM's own
            are kept as ``sampler_logprobs``, to measure the mismatch.

    Returns:
        The rollout, and seconds spent per phase: ``generation``, ``forward`` (reference log-probs
        and values; with the HF engine the old log-probs come with the generation) and ``scoring``.
    """
    from alignlab.models.generation import left_pad, stop_token_ids

    device = next(policy.parameters()).device
    eos_ids = stop_token_ids(tokenizer, policy)
    query, query_mask = (t.to(device) for t in left_pad(queries, tokenizer.pad_token_id))
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    sampler_logprobs = None
    if engine is None:
        response, old_logprobs = sample_with_logprobs(
            policy, query, query_mask, settings, eos_ids, tokenizer.pad_token_id
        )
    else:
        response, sampler_logprobs = sample_with_engine(
            engine, queries, settings, eos_ids, tokenizer.pad_token_id, device
        )
    mask, ended = response_mask(response, eos_ids)
    response = torch.where(mask.bool(), response, tokenizer.pad_token_id)
    seconds["generation"] = time.perf_counter() - start

    start = time.perf_counter()
    if engine is None:
        old_logprobs = old_logprobs * mask  # after the end, generate sampled padding the forward passes mask
    elif str(getattr(getattr(settings, "vllm", None), "logprobs", "trainer")) == "engine":
        old_logprobs, sampler_logprobs = sampler_logprobs * mask, None  # vLLM's own, no extra pass
    else:  # the trainer's own log-probs of vLLM's tokens: the PPO ratio stays exact
        old_logprobs = sequence_logprobs(
            policy, query, query_mask, response, mask, settings.temperature, settings.batch_size
        )
        sampler_logprobs = sampler_logprobs * mask
    ref_logprobs, values = rollout_forward(
        policy,
        reference,
        critic,
        query,
        query_mask,
        response,
        mask,
        settings.temperature,
        settings.batch_size,
        with_reference=with_reference,
    )
    seconds["forward"] = time.perf_counter() - start

    start = time.perf_counter()
    responses = [text.strip() for text in tokenizer.batch_decode(response, skip_special_tokens=True)]
    by_column = {k: [c[k] for c in columns] for k in (columns[0] if columns else {})}
    raw = torch.tensor(score_chats(scorer, prompts, responses, by_column), dtype=torch.float32, device=device)
    scores = shaper(raw, ended)
    seconds["scoring"] = time.perf_counter() - start
    rollout = Rollout(
        query=query,
        query_mask=query_mask,
        response=response,
        mask=mask,
        logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        raw_scores=raw,
        scores=scores,
        ended=ended,
        prompts=list(prompts),
        responses=responses,
        sampler_logprobs=sampler_logprobs,
    )
    return rollout, seconds


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout of several (rows in order): prompts left-padded and responses right-padded to
    the widest, as :func:`collect_rollout` pads one."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.query.shape[1] for p in parts)
    T = max(p.response.shape[1] for p in parts)
    pad = torch.nn.functional.pad

    def left(x: Tensor, value: int) -> Tensor:
        return pad(x, (P - x.shape[1], 0), value=value)

    def right(x: Tensor, value: float) -> Tensor:
        return pad(x, (0, T - x.shape[1]), value=value)

    return Rollout(
        query=torch.cat([left(p.query, pad_id) for p in parts]),
        query_mask=torch.cat([left(p.query_mask, 0) for p in parts]),
        response=torch.cat([right(p.response, pad_id) for p in parts]),
        mask=torch.cat([right(p.mask, 0) for p in parts]),
        logprobs=torch.cat([right(p.logprobs, 0.0) for p in parts]),
        ref_logprobs=torch.cat([right(p.ref_logprobs, 0.0) for p in parts]),
        values=torch.cat([right(p.values, 0.0) for p in parts]),
        raw_scores=torch.cat([p.raw_scores for p in parts]),
        scores=torch.cat([p.scores for p in parts]),
        ended=torch.cat([p.ended for p in parts]),
        prompts=[x for p in parts for x in p.prompts],
        responses=[x for p in parts for x in p.responses],
        sampler_logprobs=None
        if any(p.sampler_logprobs is None for p in parts)
        else torch.cat([right(p.sampler_logprobs, 0.0) for p in parts]),
    )


def step_rows(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Prompt indices of ``step`` (1-based): consecutive slices of a seeded shuffle per epoch."""
    return shuffled_rows((step - 1) * batch, batch, n, seed)


def shuffled_rows(start: int, k: int, n: int, seed: int) -> list[int]:
    """Prompts ``start .. start + k - 1`` of the stream that goes through a seeded shuffle of
    ``range(n)`` per epoch."""
    rows, orders = [], {}
    for i in range(start, start + k):
        epoch = i // n
        if epoch not in orders:
            orders[epoch] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)
            ).tolist()
        rows.append(orders[epoch][i % n])
    return rows


def encode_prompt_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[list[int]], list[str], int]:
    """Chat-template canonical prompt records (``{"prompt": [messages]}``) for sampling.

    Returns:
        The token ids of each kept prompt (generation prompt appended), its chat for the scorer
        (a reward model reads every turn, a reward function the last user turn: see
        :func:`alignlab.rewards.score_chats`), and how many prompts were dropped for being longer
        than ``max_length`` tokens.
    """
    queries, prompts, _, dropped = encode_prompt_rows(tokenizer, records, max_length)
    return queries, prompts, dropped


def encode_prompt_rows(
    tokenizer: Any, records: Sequence[dict[str, Any]], max_length: int
) -> tuple[list[list[int]], list[Any], list[dict[str, Any]], int]:
    """:func:`encode_prompt_records`, with each kept record's other columns (``answer``, ...) as
    well, for the reward functions that read them."""
    from alignlab.models.generation import encode_prompts as encode

    encoded = encode(tokenizer, [r["prompt"] for r in records])
    kept = [(ids, r) for ids, r in zip(encoded, records) if len(ids) <= max_length]
    columns = [{k: v for k, v in r.items() if k != "prompt"} for _, r in kept]
    return [ids for ids, _ in kept], [r["prompt"] for _, r in kept], columns, len(records) - len(kept)
