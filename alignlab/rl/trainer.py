"""The PPO update: rewards and advantages of a rollout, then epochs of clipped updates on minibatches.

:class:`PPOTrainer` holds the policy, the critic, one AdamW optimiser (a parameter group each,
so each has its own learning rate), the learning-rate schedule and the ``accelerate.Accelerator``.
It knows nothing about data sources, checkpoints, logging or configuration: the PPO stage drives
it, and its settings are the stage's ``ppo`` group (:class:`alignlab.stages.ppo.PPOSettings`).

Example:
    >>> trainer = PPOTrainer(policy, critic, PPOSettings(), lr=1e-5, total_updates=100)  # doctest: +SKIP
    >>> experience = trainer.experience(rollout, kl_coef=0.05)  # doctest: +SKIP
    >>> stats = trainer.update(rollout, experience, step=1)  # doctest: +SKIP
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from alignlab.errors import TrainingError
from alignlab.models.accelerator import fresh_accelerator
from alignlab.rl.advantages import get_advantage_estimator, per_token_rewards
from alignlab.rl.kl import KLEstimator
from alignlab.rl.losses import (
    clipped_policy_loss,
    explained_variance,
    logprobs_from_logits,
    masked_entropy,
    policy_loss,
    value_loss,
)
from alignlab.rl.masked import masked_mean, masked_whiten
from alignlab.rl.rollout import Rollout, chunks, policy_logits, position_ids, token_values


class UpdateSettings(Protocol):
    """What the update reads of its settings (the PPO stage's ``ppo`` group,
    :class:`alignlab.stages.ppo.PPOSettings`, documents each and its source)."""

    epochs: int
    mini_batch_size: int
    clip: float
    value_clip: float | None
    vf_coef: float
    entropy_coef: float
    gamma: float
    lam: float
    whiten_advantages: bool
    advantage_estimator: str
    critic_lr: float | None


@dataclass
class Experience:
    """What the update trains on besides the rollout: all (B, T), 0 on padding."""

    rewards: Tensor
    kl: Tensor
    advantages: Tensor
    returns: Tensor


@dataclass
class GroupExperience:
    """What the critic-free update trains on besides the rollout: one advantage per response
    (B,), and a (B,) 0/1 weight of the responses whose tokens count (0: masked, e.g. truncated)."""

    advantages: Tensor
    keep: Tensor


class PTXBatches:
    """Batches of pretraining text for the PPO-ptx term (InstructGPT), in a seeded cyclic order.

    Args:
        sequences: tokenized texts (lists of ids), already cut to the maximum length.
        batch_size: texts per batch.
        pad_id: padding id.
        seed: order seed.
    """

    def __init__(
        self, sequences: Sequence[Sequence[int]], batch_size: int, pad_id: int, seed: int = 0
    ) -> None:
        if not sequences:
            raise ValueError("PTXBatches needs at least one text")
        self.sequences = [list(s) for s in sequences]
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.order = torch.randperm(
            len(self.sequences), generator=torch.Generator().manual_seed(seed)
        ).tolist()

    @classmethod
    def from_texts(
        cls, texts: Sequence[str], tokenizer: Any, *, batch_size: int, max_length: int, seed: int = 0
    ) -> PTXBatches:
        """Tokenize plain texts (no chat template), each ending with EOS, cut to ``max_length``."""
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        sequences = [(list(ids) + [tokenizer.eos_token_id])[:max_length] for ids in encoded]
        return cls(sequences, batch_size, tokenizer.pad_token_id, seed=seed)

    def batch(self, k: int) -> tuple[Tensor, Tensor]:
        """The k-th batch (cycling): input_ids and attention_mask, (b, L) right-padded."""
        n = len(self.order)
        rows = [self.sequences[self.order[(k * self.batch_size + i) % n]] for i in range(self.batch_size)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off, so that the first PPO ratio is exactly 1 (as TRL does)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PolicyAndCritic(torch.nn.Module):
    """Policy and critic as one module: DeepSpeed trains one model per engine (and one optimizer)."""

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module) -> None:
        super().__init__()
        self.policy, self.critic = policy, critic
        self.config = policy.config  # DeepSpeed's "auto" bucket sizes are read from the hidden size


class PolicyTrainer(abc.ABC):
    """The update machinery PPO and the critic-free stage share: the trained models, one AdamW
    optimiser (a parameter group each, so each has its own learning rate), the learning-rate
    schedule, the ``accelerate.Accelerator``, and epochs of minibatch steps over a rollout.

    A subclass says what a minibatch's loss is (:meth:`loss`); everything else is here.

    Under DeepSpeed (``accelerator`` built from a ``distributed`` group) policy and critic are one
    engine (:class:`PolicyAndCritic`); DeepSpeed clips the gradient norm of both together.

    Args:
        policy: the causal LM being trained (a peft model for LoRA).
        critic: the value model (see :func:`alignlab.rl.rollout.token_values`), or None.
        lr: the policy's peak learning rate; ``critic_lr`` the critic's (None = ``lr``).
        total_updates: optimiser steps in the whole run (for the schedule).
        epochs: passes over each rollout; ``mini_batch_size`` rollout rows per optimiser step
            (0 = the whole rollout in one).
        weight_decay, max_grad_norm, scheduler, warmup_ratio: as in ``TrainGroup``.
        grad_accum: micro-batches per minibatch.
        temperature: the sampling temperature (log-probs are taken at it).
        seed: minibatch order seed.
        ptx: pretraining batches for the PPO-ptx term; ``ptx_coef`` weighs its LM loss.
        accelerator: an ``accelerate.Accelerator`` (None: :func:`fresh_accelerator`).
    """

    name = "policy"  # in error messages

    def __init__(
        self,
        policy: Any,
        critic: Any | None,
        *,
        lr: float,
        total_updates: int,
        epochs: int = 1,
        mini_batch_size: int = 8,
        critic_lr: float | None = None,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = 1.0,
        scheduler: str = "constant",
        warmup_ratio: float = 0.0,
        grad_accum: int = 1,
        temperature: float = 1.0,
        seed: int = 0,
        ptx: PTXBatches | None = None,
        ptx_coef: float = 0.0,
        accelerator: Any = None,
    ) -> None:
        from transformers import get_scheduler

        self.accelerator = accelerator or fresh_accelerator()
        models = [m for m in (policy, critic) if m is not None]
        for model in models:
            disable_dropout(model)
            model.eval()  # no dropout anywhere; gradients still flow
        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": lr}]
        if critic is not None:
            groups.append(
                {"params": [p for p in critic.parameters() if p.requires_grad], "lr": critic_lr or lr}
            )
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        self.engine = None  # the DeepSpeed engine, when there is one
        self.critic: Any = None
        if self.accelerator.distributed_type == "DEEPSPEED":
            self.engine, self.optimizer = self.accelerator.prepare(PolicyAndCritic(policy, critic), optimizer)
            self.policy, self.critic = self.engine.module.policy, self.engine.module.critic
        elif critic is not None:
            self.policy, self.critic, self.optimizer = self.accelerator.prepare(policy, critic, optimizer)
        else:
            self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self._boundary = True  # the current micro-batch ends a minibatch
        self.scheduler = get_scheduler(
            scheduler,
            optimizer,
            num_warmup_steps=math.ceil(warmup_ratio * total_updates),
            num_training_steps=max(total_updates, 1),
        )
        self.epochs, self.mini_batch_size = epochs, mini_batch_size
        self.max_grad_norm = max_grad_norm
        self.grad_accum = max(1, grad_accum)
        self.temperature = temperature
        self.seed = seed
        self.ptx, self.ptx_coef = ptx, ptx_coef
        self.updates = 0  # optimiser steps taken
        self.ptx_batches = 0  # pretraining batches drawn

    @abc.abstractmethod
    def loss(self, batch: Rollout, experience: Any, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The loss of the rollout rows ``index`` (``batch`` is ``rollout.select(index)``): what each
        RL family defines (:class:`PPOTrainer`, :class:`GroupTrainer`)."""

    def update(self, rollout: Rollout, experience: Any, step: int) -> dict[str, float]:
        """``epochs`` over shuffled minibatches of the rollout; returns the mean of each statistic.

        Raises:
            TrainingError: a non-finite loss (nothing is stepped with it).
        """
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        history: dict[str, list[float]] = defaultdict(list)
        for epoch in range(self.epochs):
            permutation = torch.randperm(len(rollout), generator=order).to(rollout.query.device)
            for number, part in enumerate(chunks(len(rollout), self.mini_batch_size or len(rollout))):
                index = permutation[part]
                micro_parts = chunks(len(index), math.ceil(len(index) / self.grad_accum))
                for k, micro in enumerate(micro_parts):
                    self._boundary = k == len(micro_parts) - 1
                    stats = self._backward(
                        rollout, experience, index[micro], len(micro_parts), where=(step, epoch, number)
                    )
                    for key, value in stats.items():
                        history[key].append(value)
                history["grad_norm_policy"].append(self._clip(self.policy))
                if self.critic is not None:
                    history["grad_norm_critic"].append(self._clip(self.critic))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.updates += 1
        out = {key: sum(values) / len(values) for key, values in history.items()}
        out["lr"] = self.scheduler.get_last_lr()[0]
        return out

    def _backward(
        self,
        rollout: Rollout,
        experience: Any,
        index: Tensor,
        n_micro: int,
        where: tuple[int, int, int],
    ) -> dict[str, float]:
        loss, stats = self.loss(rollout.select(index), experience, index)
        if self.ptx is not None and self.ptx_coef:
            ptx_loss = self._ptx_loss()
            loss = loss + self.ptx_coef * ptx_loss
            stats["ptx_loss"] = ptx_loss.item()
        if not torch.isfinite(loss):
            step, epoch, number = where
            shown = ", ".join(
                f"{k}={stats[k]}" for k in ("policy_loss", "value_loss", "entropy") if k in stats
            )
            raise TrainingError(
                f"non-finite {self.name} loss at step {step} (epoch {epoch}, minibatch {number}): "
                f"{shown}; lower train.lr" + (" or ppo.critic_lr, or raise kl.coef" if self.critic else "")
            )
        if self.engine is not None:
            # DeepSpeed reduces (and steps, with its clipping) at the minibatch's last micro-batch
            self.engine.set_gradient_accumulation_boundary(self._boundary)
            self.engine.backward(loss / n_micro)
            self.engine.step()
        else:
            self.accelerator.backward(loss / n_micro)
        return stats

    def _logits(self, batch: Rollout) -> tuple[Tensor, Tensor]:
        """(b, T, V) logits of the policy on the batch, and the (b, T) log-probs of its responses."""
        T = batch.response.shape[1]
        logits = policy_logits(self.policy, batch.input_ids, batch.attention_mask, T, self.temperature)
        return logits, logprobs_from_logits(logits, batch.response)

    @contextlib.contextmanager
    def for_generation(self) -> Iterator[tuple[Any, Any]]:
        """``(policy, critic)`` unwrapped for a rollout; under ZeRO-3 gathered once for all of it."""
        if self.engine is None:
            critic = None if self.critic is None else self.accelerator.unwrap_model(self.critic)
            yield self.accelerator.unwrap_model(self.policy), critic
            return
        from alignlab.distributed.runtime import gathered_for_generation

        with gathered_for_generation(self.engine, self.accelerator) as both:
            yield both.policy, both.critic

    def _ptx_loss(self) -> Tensor:
        assert self.ptx is not None
        device = self.accelerator.device
        ids, attn = (t.to(device) for t in self.ptx.batch(self.ptx_batches))
        self.ptx_batches += 1
        labels = torch.where(attn.bool(), ids, -100)
        return self.policy(
            input_ids=ids,
            attention_mask=attn,
            position_ids=position_ids(attn),
            labels=labels,
            use_cache=False,
        ).loss

    def _clip(self, model: Any) -> float:
        if self.engine is not None:  # DeepSpeed clipped both models together in its step
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else 0.0
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        if self.max_grad_norm:
            return float(self.accelerator.clip_grad_norm_(params, self.max_grad_norm))
        return float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        )

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and schedule state (plain tensors and numbers: loads with ``weights_only``)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "updates": self.updates,
            "ptx_batches": self.ptx_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates = int(state["updates"])
        self.ptx_batches = int(state["ptx_batches"])


class PPOTrainer(PolicyTrainer):
    """Policy + critic: turns PPO rollouts into parameter updates (clipped surrogate + clipped
    value loss − entropy bonus), with per-token KL-penalised rewards and GAE advantages.

    Args:
        policy, critic: the causal LM and the value model.
        settings: PPO hyperparameters (the PPO stage's ``ppo`` group).
        **kwargs: as :class:`PolicyTrainer` (``lr``, ``total_updates``, ...).
    """

    name = "PPO"

    def __init__(self, policy: Any, critic: Any, settings: UpdateSettings, **kwargs: Any) -> None:
        super().__init__(
            policy,
            critic,
            epochs=settings.epochs,
            mini_batch_size=settings.mini_batch_size,
            critic_lr=settings.critic_lr,
            **kwargs,
        )
        self.settings = settings
        self.estimate_advantages = get_advantage_estimator(settings.advantage_estimator)

    @torch.no_grad()
    def experience(
        self, rollout: Rollout, kl_coef: float, kl_estimator: KLEstimator | str = KLEstimator.K1
    ) -> Experience:
        """Per-token rewards (-β·KL, score at the last token), advantages and returns."""
        s = self.settings
        rewards, kl = per_token_rewards(
            rollout.scores,
            rollout.logprobs,
            rollout.ref_logprobs,
            rollout.mask,
            kl_coef=kl_coef,
            kl_estimator=kl_estimator,
        )
        advantages, returns = self.estimate_advantages(
            rewards, rollout.values, rollout.mask, gamma=s.gamma, lam=s.lam
        )
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, rollout.mask)
        return Experience(rewards=rewards, kl=kl, advantages=advantages, returns=returns)

    def update(self, rollout: Rollout, experience: Experience, step: int) -> dict[str, float]:
        out = super().update(rollout, experience, step)
        out["explained_variance"] = explained_variance(rollout.values, experience.returns, rollout.mask)
        return out

    def loss(self, batch: Rollout, experience: Experience, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        s = self.settings
        mask = batch.mask
        logits, logprobs = self._logits(batch)
        with torch.set_grad_enabled(
            torch.is_grad_enabled() and s.entropy_coef != 0
        ):  # a metric unless a bonus
            entropy = masked_entropy(logits, mask)
        del logits
        values = token_values(self.critic, batch.input_ids, batch.attention_mask, batch.response.shape[1])
        pg_loss, pg_stats = policy_loss(
            logprobs, batch.logprobs, experience.advantages[index], mask, clip=s.clip
        )
        vf_loss, vf_stats = value_loss(
            values, batch.values, experience.returns[index], mask, clip=s.value_clip
        )
        loss = pg_loss + s.vf_coef * vf_loss
        if s.entropy_coef:
            loss = loss - s.entropy_coef * entropy
        stats = {
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            "entropy": entropy.item(),
            "value_mean": masked_mean(values.detach(), mask).item(),
            **pg_stats,
            **vf_stats,
        }
        return loss, stats


class GroupLossSettings(Protocol):
    """What the critic-free update reads of its settings (the GRPO stage's ``grpo`` group,
    :class:`alignlab.stages.grpo.GRPOSettings`, documents each and its source)."""

    epochs: int
    mini_batch_size: int
    clip_low: float
    clip_high: float
    importance_sampling: str
    loss_aggregation: str
    kl_coef: float
    entropy_coef: float


class GroupTrainer(PolicyTrainer):
    """The critic-free update (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, GSPO): one advantage per
    response (a :class:`GroupExperience`), the clipped surrogate of
    :func:`alignlab.rl.losses.clipped_policy_loss`, an optional k3 KL term and an entropy bonus.

    Args:
        policy: the causal LM (a peft model for LoRA).
        settings: the loss settings (the GRPO stage's ``grpo`` group).
        max_tokens: the generation budget (the ``constant`` aggregation's divisor).
        **kwargs: as :class:`PolicyTrainer`.
    """

    name = "GRPO"

    def __init__(self, policy: Any, settings: GroupLossSettings, *, max_tokens: int, **kwargs: Any) -> None:
        super().__init__(
            policy, None, epochs=settings.epochs, mini_batch_size=settings.mini_batch_size, **kwargs
        )
        self.settings = settings
        self.max_tokens = max_tokens

    def loss(
        self, batch: Rollout, experience: GroupExperience, index: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        s = self.settings
        mask = batch.mask * experience.keep[index, None].to(batch.mask.dtype)
        logits, logprobs = self._logits(batch)
        with torch.set_grad_enabled(torch.is_grad_enabled() and s.entropy_coef != 0):
            entropy = masked_entropy(logits, mask)
        del logits
        pg_loss, stats = clipped_policy_loss(
            logprobs,
            batch.logprobs,
            experience.advantages[index],
            mask,
            clip_low=s.clip_low,
            clip_high=s.clip_high,
            importance_sampling=s.importance_sampling,
            aggregation=s.loss_aggregation,
            max_tokens=self.max_tokens,
            ref_logprobs=batch.ref_logprobs if s.kl_coef else None,
            kl_coef=s.kl_coef,
        )
        loss = pg_loss - s.entropy_coef * entropy if s.entropy_coef else pg_loss
        return loss, {"policy_loss": pg_loss.item(), "entropy": entropy.item(), **stats}
