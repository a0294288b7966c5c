"""`DPO`: direct preference optimisation (and its variants) on chosen/rejected pairs, with TRL underneath.

The policy starts from the input model (an SFT artifact); the reference is that same model, frozen.
With LoRA / QLoRA / prompt tuning the reference is the policy with its adapter disabled (TRL's
DPOTrainer does this when given a ``peft_config`` and no ``ref_model``), so no second copy is held;
full fine-tuning holds a frozen copy. Reference-free variants (SimPO, CPO) need no reference at all
and run on TRL's ``experimental.cpo.CPOTrainer``, the only place TRL 1.16 offers them.

After training the stage measures KL(π ‖ π_ref) on held-out prompts (see :func:`kl_to_reference`)
and the gold score on the testbed. Loss types, their formulas and papers: docs/stages/dpo.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from alignlab.config import load_config, run_control_group
from alignlab.distributed.config import DistributedGroup
from alignlab.distributed.runtime import check_distributed, is_zero3, main_process_model, trainable_parameters
from alignlab.errors import ConfigError, TrainingError
from alignlab.models.adapters import AdapterGroup
from alignlab.registry import Artifact, Registry
from alignlab.stages.contract import Input
from alignlab.stages.evaluation import gold_metrics, uses_testbed
from alignlab.stages.groups import ChatData, EvalGroup, TrackingGroup, TrainGroup
from alignlab.stages.lifecycle import (
    StageRun,
    hf_training_args,
    log_history_metrics,
    policy_output_kind,
    prepare_policy_stage,
    run_policy_stage,
)

log = logging.getLogger("alignlab")

# cDPO is not one of TRL 1.16's DPO losses; it is the exact combination
# (1 + 2ε)·sigmoid − 2ε·robust(ε' = 1/4) = (1 − ε)·ℓ(Δ) + ε·ℓ(−Δ), with ℓ(x) = −log σ(βx),
# because robust(1/4) = 1.5·ℓ(Δ) − 0.5·ℓ(−Δ). See DPOLossType.trl_args.
_CDPO_ROBUST_EPS = 0.25


@dataclass(frozen=True)
class _LossSpec:
    trl: str  # TRL's loss_type name (DPOTrainer), for the members DPOLossType.trl_args maps one to one
    paper: str
    reference_free: bool = False
    default_beta: float = 0.1
    default_label_smoothing: float | None = None  # None: the loss does not read label_smoothing


class DPOLossType(StrEnum):
    """The preference loss. ``Δ`` = (log π − log π_ref)(chosen) − (log π − log π_ref)(rejected).

    Each member knows whether it needs a reference model, its default β and label smoothing,
    and how it maps onto TRL's config fields (:meth:`trl_args`). Formulas: docs/stages/dpo.md.
    """

    SIGMOID = "sigmoid"  # DPO: −log σ(βΔ)
    IPO = "ipo"  # (Δ/|y| − 1/(2β))², Δ per token as in TRL
    HINGE = "hinge"  # SLiC: max(0, 1 − βΔ)
    CONSERVATIVE = "conservative"  # cDPO: labels flipped with probability ε
    ROBUST = "robust"  # rDPO: unbiased under label noise ε
    EXO = "exo_pair"
    NCA = "nca_pair"
    BCO = "bco_pair"
    SPPO_HARD = "sppo_hard"
    APO_ZERO = "apo_zero"
    APO_DOWN = "apo_down"
    DISCOPOP = "discopop"
    SIGMOID_NORM = "sigmoid_norm"  # DPO on per-token (length-normalised) log-ratios
    RPO = "rpo"  # DPO + α·NLL of the chosen response (per token)
    SIMPO = "simpo"  # reference-free: −log σ(β·Δavg − γ), Δavg on the policy's mean token log-probs
    CPO = "cpo"  # reference-free: −log σ(β·(log π(y_w) − log π(y_l))) + NLL(y_w)

    @property
    def spec(self) -> _LossSpec:
        return _LOSSES[self]

    @property
    def needs_reference_model(self) -> bool:
        """Whether training compares the policy with a frozen reference (False for SimPO, CPO)."""
        return not self.spec.reference_free

    @property
    def default_beta(self) -> float:
        return self.spec.default_beta

    @property
    def paper(self) -> str:
        return self.spec.paper

    @property
    def uses_label_smoothing(self) -> bool:
        return self.spec.default_label_smoothing is not None

    def trl_args(
        self,
        beta: float,
        label_smoothing: float | None = None,
        simpo_gamma: float = 1.0,
        rpo_alpha: float = 1.0,
    ) -> dict[str, Any]:
        """The loss fields of TRL's ``DPOConfig`` (or ``CPOConfig`` for reference-free losses)."""
        eps = self.spec.default_label_smoothing if label_smoothing is None else label_smoothing
        if self is DPOLossType.RPO:
            return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, rpo_alpha], "beta": beta}
        if self is DPOLossType.SIMPO:
            return {"loss_type": "simpo", "beta": beta, "simpo_gamma": simpo_gamma, "cpo_alpha": 0.0}
        if self is DPOLossType.CPO:
            return {"loss_type": "sigmoid", "beta": beta, "cpo_alpha": 1.0}
        if self is DPOLossType.CONSERVATIVE:
            return {
                "loss_type": ["sigmoid", "robust"],
                "loss_weights": [1.0 + 2.0 * eps, -2.0 * eps],
                "label_smoothing": _CDPO_ROBUST_EPS,
                "beta": beta,
            }
        return {"loss_type": [self.spec.trl], "beta": beta, "label_smoothing": eps or 0.0}


_LOSSES: dict[DPOLossType, _LossSpec] = {
    DPOLossType.SIGMOID: _LossSpec("sigmoid", "Rafailov et al. 2023, arXiv:2305.18290"),
    DPOLossType.IPO: _LossSpec("ipo", "Azar et al. 2023, arXiv:2310.12036"),
    DPOLossType.HINGE: _LossSpec("hinge", "Zhao et al. 2023 (SLiC-HF), arXiv:2305.10425"),
    DPOLossType.CONSERVATIVE: _LossSpec(
        "sigmoid", "Mitchell 2023, 'A note on DPO with noisy preferences'", default_label_smoothing=0.1
    ),
    DPOLossType.ROBUST: _LossSpec(
        "robust", "Chowdhury et al. 2024, arXiv:2403.00409", default_label_smoothing=0.1
    ),
    DPOLossType.EXO: _LossSpec("exo_pair", "Ji et al. 2024, arXiv:2402.00856", default_label_smoothing=1e-3),
    DPOLossType.NCA: _LossSpec("nca_pair", "Chen et al. 2024, arXiv:2402.05369"),
    DPOLossType.BCO: _LossSpec("bco_pair", "Jung et al. 2024, arXiv:2404.04656"),
    DPOLossType.SPPO_HARD: _LossSpec("sppo_hard", "Wu et al. 2024, arXiv:2405.00675"),
    DPOLossType.APO_ZERO: _LossSpec("apo_zero", "D'Oosterlinck et al. 2024, arXiv:2408.06266"),
    DPOLossType.APO_DOWN: _LossSpec("apo_down", "D'Oosterlinck et al. 2024, arXiv:2408.06266"),
    DPOLossType.DISCOPOP: _LossSpec("discopop", "Chris Lu et al. 2024, arXiv:2406.08414"),
    DPOLossType.SIGMOID_NORM: _LossSpec("sigmoid_norm", "DPO with length-normalised log-ratios (TRL)"),
    DPOLossType.RPO: _LossSpec("sigmoid", "Pang et al. 2024, arXiv:2404.19733"),
    DPOLossType.SIMPO: _LossSpec(
        "simpo", "Meng et al. 2024, arXiv:2405.14734", reference_free=True, default_beta=2.0
    ),
    DPOLossType.CPO: _LossSpec("sigmoid", "Xu et al. 2024, arXiv:2401.08417", reference_free=True),
}
assert set(_LOSSES) == set(DPOLossType), "every DPOLossType needs exactly one _LossSpec"


@run_control_group
@dataclass
class KLEval:
    """KL(π ‖ π_ref) measured after training (see :func:`kl_to_reference`); run control, like
    ``eval``: not part of the fingerprint.

    Attributes:
        n: prompts to sample one response each for (held-out testbed prompts on the testbed, else
            the first N training prompts); 0 turns the measurement off.
        max_new_tokens: longest sampled response.
        seed: sampling seed.
    """

    n: int = 64
    max_new_tokens: int = 32
    seed: int = 0


@dataclass
class DPOConfig:
    """Settings of a DPO run.

    Defaults: β = 0.1 as in the DPO paper (Rafailov et al. 2023, §6) and TRL; 2.0 for SimPO (Meng et
    al. 2024 tune β in 2.0–2.5). The paper's lr 1e-6 (TRL's default) is for 1B+ models; the tiny
    testbed models need a far larger step, like SFT's.

    Attributes:
        output: artifact name to publish.
        data: preference pairs.
        train: optimisation.
        adapter: full | lora | qlora | prompt_tuning (the reference is then the adapter-free model).
        loss_type: the preference loss (DPOLossType): sigmoid (DPO), ipo, hinge, conservative,
            robust, simpo, cpo, ... (docs/stages/dpo.md has the table).
        beta: β, the inverse temperature of the implicit reward (IPO's τ); None takes the loss
            type's default.
        label_smoothing: ε, the assumed share of flipped labels for conservative / robust (default
            0.1) and EXO's ε (default 1e-3); None takes the default; other losses ignore it.
        simpo_gamma: SimPO's target reward margin γ (with β = 2.0, γ/β = 0.5 as the paper suggests).
        rpo_alpha: weight α of the chosen response's NLL in RPO (1.0 in the RPO paper).
        kl: the KL-to-reference measurement after training.
        eval: end-of-stage gold evaluation (testbed only).
        tracking: wandb / tensorboard.
        distributed: DeepSpeed ZeRO, offload, precision, checkpointing (docs/scaling.md).
    """

    output: str = "dpo"
    data: ChatData = field(default_factory=lambda: ChatData(source="testbed:preferences"))
    train: TrainGroup = field(
        default_factory=lambda: TrainGroup(epochs=1.0, lr=1e-4, batch_size=16, logging_steps=5)
    )
    adapter: AdapterGroup = field(default_factory=AdapterGroup)
    loss_type: DPOLossType = DPOLossType.SIGMOID
    beta: float | None = None
    label_smoothing: float | None = None
    simpo_gamma: float = 1.0
    rpo_alpha: float = 1.0
    kl: KLEval = field(default_factory=KLEval)
    eval: EvalGroup = field(default_factory=EvalGroup)
    tracking: TrackingGroup = field(default_factory=TrackingGroup)
    distributed: DistributedGroup = field(default_factory=DistributedGroup)

    def __post_init__(self) -> None:
        self.loss_type = DPOLossType(self.loss_type)  # DPOConfig(loss_type="ipo") from Python
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(f"'beta' must be > 0, got {self.beta}")
        eps = self.label_smoothing
        if eps is not None:
            if not self.loss_type.uses_label_smoothing:
                log.warning("dpo: label_smoothing=%s is ignored by loss_type=%s", eps, self.loss_type)
            elif self.loss_type is DPOLossType.EXO and not 0.0 < eps < 1.0:
                raise ConfigError(f"'label_smoothing' must be in (0, 1) for loss_type=exo_pair, got {eps}")
            elif self.loss_type is not DPOLossType.EXO and not 0.0 <= eps < 0.5:
                raise ConfigError(
                    f"'label_smoothing' is the share of flipped labels and must be in [0, 0.5) for "
                    f"loss_type={self.loss_type}, got {eps}"
                )
        if self.simpo_gamma < 0:
            raise ConfigError(f"'simpo_gamma' must be >= 0, got {self.simpo_gamma}")
        if self.kl.n < 0:
            raise ConfigError(f"'kl.n' must be >= 0, got {self.kl.n}")

    @property
    def resolved_beta(self) -> float:
        return self.loss_type.default_beta if self.beta is None else self.beta


def preference_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical preference records as TRL's conversational rows.

    ``{"prompt": [messages], "chosen": str, "rejected": str}`` becomes ``{"prompt": [messages],
    "chosen": [assistant message], "rejected": [assistant message]}``, so TRL renders the pairs with
    the same chat template as SFT. ``margin`` is not used by these losses and is dropped.
    """

    def turn(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    return [
        {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in r["prompt"]],
            "chosen": turn(r["chosen"]),
            "rejected": turn(r["rejected"]),
        }
        for r in records
    ]


def _response_logprobs(model: Any, sequences: Any, attention_mask: Any, n_response: int) -> Any:
    """Log-probs of the last ``n_response`` tokens of left-padded ``sequences``: (B, L) -> (B, R)."""
    from alignlab.rl.losses import logprobs_from_logits

    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # as generate() numbers left-padded rows
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids).logits
    # negative slicing: prompt-tuning adapters prepend virtual tokens to the logits
    return logprobs_from_logits(logits[:, -(n_response + 1) : -1], sequences[:, -n_response:])


def kl_to_reference(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, Any]]],
    reference: Any | None = None,
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, float]:
    """Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref) on ``prompts``.

    For each prompt x one response y ~ π(·|x) is sampled (temperature 1, no top-k/top-p, up to and
    including EOS or ``max_new_tokens``); then ``KL ≈ mean_x Σ_t [log π(y_t|x,y_<t) − log π_ref(y_t|x,y_<t)]``.
    This k1 estimator is unbiased (E_{y~π}[log π(y) − log π_ref(y)] is the KL by definition) but a
    single sample can be negative; ``kl_to_reference_k3`` sums Schulman's per-token
    ``(r − 1) − log r`` with ``r = π_ref/π`` instead: also unbiased, never negative, lower variance.

    Args:
        policy: the trained model (a PeftModel when ``reference`` is None).
        tokenizer: its tokenizer (chat template applied with the generation prompt).
        prompts: plain-string user turns or message lists.
        reference: the frozen reference model; None means the policy with its adapter disabled.

    Returns:
        ``{"kl_to_reference", "kl_to_reference_k3", "kl_response_tokens"}`` (the last: mean length).
    """
    import torch

    from alignlab.models.generation import encode_prompts, left_pad, stop_token_ids
    from alignlab.rl.kl import KLEstimator
    from alignlab.rl.rollout import response_mask

    ref_model = policy if reference is None else reference
    disabled = policy.disable_adapter if reference is None else contextlib.nullcontext
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    torch.manual_seed(seed)
    k1, k3, lengths = [], [], []
    stops = stop_token_ids(tokenizer, policy)
    encoded = encode_prompts(tokenizer, prompts)
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            ids, mask = left_pad(encoded[start : start + batch_size], tokenizer.pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            out = policy.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops,
            )
            response = out[:, ids.shape[1] :]  # (B, R)
            resp_mask = response_mask(response, stops)[0]  # tokens up to and including the first stop
            full_mask = torch.cat([mask, resp_mask], dim=1)
            logp = _response_logprobs(policy, out, full_mask, response.shape[1])
            with disabled():
                ref_logp = _response_logprobs(ref_model, out, full_mask, response.shape[1])
            k1.append((KLEstimator.K1.estimate(logp, ref_logp) * resp_mask).sum(-1))
            k3.append((KLEstimator.K3.estimate(logp, ref_logp) * resp_mask).sum(-1))
            lengths.append(resp_mask.sum(-1).float())
    if was_training:
        policy.train()
    return {
        "kl_to_reference": torch.cat(k1).mean().item(),
        "kl_to_reference_k3": torch.cat(k3).mean().item(),
        "kl_response_tokens": torch.cat(lengths).mean().item(),
    }


_REWARD_KEYS = {
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
}


def reward_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Implicit-reward accuracy and margins from TRL's logs: the last logged window, and the curves.

    The implicit reward is β·(log π − log π_ref)(y) (β·log π(y) for the reference-free losses);
    ``reward_accuracy`` is the share of training pairs, over the last logging window, whose chosen
    response gets the higher implicit reward.
    """
    out: dict[str, Any] = {}
    for key, name in _REWARD_KEYS.items():
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            out[name] = points[-1][1]
            if name in ("reward_accuracy", "reward_margin"):
                out[f"{name}_curve"] = points
    return out


class DPO:
    """Direct preference optimisation of a policy on preference pairs.

    Example:
        >>> from alignlab import DPO, Registry
        >>> dpo = DPO({"loss_type": "ipo", "data": {"source": "testbed:preferences?n=500"}})
        >>> art = dpo.run(Registry(), model="sft")  # doctest: +SKIP
        >>> art.metrics["gold_score"], art.metrics["kl_to_reference"]  # doctest: +SKIP
    """

    name = "dpo"
    config_cls = DPOConfig
    inputs = (Input("model", doc="the policy to align; it is also the frozen reference"),)

    def __init__(self, config: DPOConfig | dict | None = None) -> None:
        self.config = load_config(DPOConfig, config)
        check_distributed(self.config.distributed, self.config.adapter)

    def output_kind(self) -> str:
        return policy_output_kind(self.config.adapter)

    def check(self, registry: Registry, *, model: Any = None) -> None:
        prepare_policy_stage(self, registry, model, data_kind="preference")

    def run(
        self, registry: Registry | None = None, *, model: str | None = None, force: bool = False
    ) -> Artifact:
        return run_policy_stage(self, registry, model, data_kind="preference", force=force, body=self._train)

    def _train(self, run: StageRun, cfg: DPOConfig) -> None:
        from datasets import Dataset

        from alignlab.models import load_causal_lm, save_model
        from alignlab.models.adapters import finalize, peft_config, quantization_kwargs

        source = run.inputs["model"]
        model, tok = load_causal_lm(
            source, run.registry, merge_adapter=True, **quantization_kwargs(cfg.adapter)
        )
        peft = peft_config(cfg.adapter)
        # full fine-tuning needs a frozen copy; with an adapter, the adapter-free policy is the reference
        reference = None
        if peft is None and cfg.loss_type.needs_reference_model:
            reference, _ = load_causal_lm(source, run.registry, merge_adapter=True)
        dataset = Dataset.from_list(preference_rows(run.data["train"].records))
        trainer = _make_trainer(cfg, model, reference, tok, dataset, peft)
        trainer.train()

        history = trainer.state.log_history
        metrics = log_history_metrics(history)
        losses = [h["loss"] for h in history if "loss" in h]
        if not losses or not all(math.isfinite(x) for x in losses):
            raise TrainingError(
                f"dpo: the training loss is not finite ({losses[-3:]}); lower train.lr or beta"
            )
        metrics.update(reward_metrics(history))
        metrics["beta"] = cfg.resolved_beta
        metrics["trainable_parameters"] = trainable_parameters(trainer.model)
        policy = main_process_model(trainer.model)
        if policy is None:  # another process: the main one evaluates and publishes
            return
        if reference is not None and is_zero3(reference):  # sharded by TRL: reload it whole
            reference = None
        if cfg.kl.n:
            if reference is None and peft is None:  # reference-free full fine-tune: load it only now
                reference, _ = load_causal_lm(source, run.registry, merge_adapter=True)
            metrics.update(
                kl_to_reference(
                    policy,
                    tok,
                    self._kl_prompts(run, cfg),
                    reference,
                    max_new_tokens=cfg.kl.max_new_tokens,
                    seed=cfg.kl.seed,
                )
            )
            log.info("dpo: KL to reference %.3f nats/response", metrics["kl_to_reference"])
        trained = finalize(policy, cfg.adapter)
        metrics.update(gold_metrics(trained, tok, cfg.eval, uses_testbed(cfg.data.source)))
        save_model(trained, tok, run.dir)
        run.metrics.update(metrics)

    @staticmethod
    def _kl_prompts(run: StageRun, cfg: DPOConfig) -> list[Any]:
        if uses_testbed(cfg.data.source):
            from alignlab.testbed import eval_prompts

            return list(eval_prompts(cfg.kl.n))
        return [r["prompt"] for r in run.data["train"].records[: cfg.kl.n]]


def _make_trainer(cfg: DPOConfig, model: Any, reference: Any, tok: Any, dataset: Any, peft: Any) -> Any:
    """TRL's DPOTrainer, or its experimental CPOTrainer for the reference-free losses."""

    loss_args = cfg.loss_type.trl_args(cfg.resolved_beta, cfg.label_smoothing, cfg.simpo_gamma, cfg.rpo_alpha)
    common = dict(
        **hf_training_args(cfg.train, cfg.tracking, cfg.output, cfg.distributed),
        max_length=cfg.data.max_length,
        dataset_num_proc=None,
        **loss_args,
    )
    if cfg.loss_type.needs_reference_model:
        from trl import DPOConfig as TRLDPOConfig
        from trl import DPOTrainer

        return DPOTrainer(
            model=model,
            ref_model=reference,
            args=TRLDPOConfig(**common),
            train_dataset=dataset,
            processing_class=tok,
            peft_config=peft,
        )
    with _quiet_experimental():
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**common, remove_unused_columns=False)  # its collator needs the raw columns
    return CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=peft)


@contextlib.contextmanager
def _quiet_experimental():
    """trl.experimental warns on import; alignlab chose it knowingly (SimPO / CPO live only there)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        yield
