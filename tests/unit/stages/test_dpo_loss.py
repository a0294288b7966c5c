"""DPO loss types: alignlab's mapping onto TRL gives the closed-form losses; config validation; KL.

TRL 1.16 computes the DPO losses inside ``DPOTrainer._compute_loss``; these tests run that very
method on hand-made log-probs (a stand-in model returns them, the reference log-probs come in as
precomputed inputs), with the trainer attributes set from a TRL config built by
``DPOLossType.trl_args``, and compare with the formulas worked by hand.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.stages.dpo import DPO, DPOConfig, DPOLossType, kl_to_reference, preference_rows

# (policy chosen, policy rejected, reference chosen, reference rejected) sequence log-probs, 3 pairs
POLICY_C = torch.tensor([-4.0, -9.0, -2.5], dtype=torch.float64)
POLICY_R = torch.tensor([-6.0, -7.5, -2.0], dtype=torch.float64)
REF_C = torch.tensor([-5.0, -8.0, -3.0], dtype=torch.float64)
REF_R = torch.tensor([-5.5, -8.5, -2.2], dtype=torch.float64)
DELTA = (POLICY_C - REF_C) - (POLICY_R - REF_R)  # [1.5, 2.5, 0.3]


def logsig(x: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(x)


def trl_dpo_loss(
    loss_type: DPOLossType, beta: float, tmp_path, lengths: tuple[int, int] = (1, 1), **kwargs
) -> torch.Tensor:
    """TRL's DPO loss for the pairs above, completions of ``lengths`` (chosen, rejected) tokens."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    args = TRLDPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **loss_type.trl_args(beta, **kwargs)
    )
    n, width = len(POLICY_C), max(lengths) + 1
    lens = torch.tensor([lengths[0]] * n + [lengths[1]] * n)
    completion_mask = torch.zeros(2 * n, width, dtype=torch.long)  # (2B, T): [chosen; rejected]
    for i, length in enumerate(lens):
        completion_mask[i, 1 : 1 + length] = 1
    shift_mask = completion_mask[:, 1:].to(torch.float64)  # (2B, T-1)
    per_token = torch.cat([POLICY_C, POLICY_R])[:, None] / lens[:, None] * shift_mask  # sums to the logps

    def model(**_: object) -> SimpleNamespace:  # stands in for the fused-LM-head forward
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(
            log_probs=per_token,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(per_token, dtype=torch.bool),
        )

    trainer = object.__new__(DPOTrainer)
    # what DPOTrainer.__init__ derives from its config ("Training arguments" in dpo_trainer.py)
    trainer.args = args
    trainer.beta = args.beta
    trainer.precompute_ref_logps = True  # the reference log-probs come with the inputs
    trainer.loss_types = args.loss_type
    trainer.loss_weights = args.loss_weights or [1.0] * len(args.loss_type)
    trainer.ld_alpha = args.ld_alpha
    trainer.f_divergence_type = args.f_divergence_type
    trainer.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    trainer.label_smoothing = args.label_smoothing
    trainer.use_weighting = args.use_weighting
    trainer.aux_loss_enabled = False
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    inputs = {
        "input_ids": torch.zeros(2 * n, width, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": REF_C,
        "ref_rejected_logps": REF_R,
    }
    return trainer._compute_loss(model, inputs, return_outputs=False)


def test_sigmoid_matches_closed_form(tmp_path) -> None:
    beta = 0.1
    expected = -logsig(beta * DELTA).mean()  # −log σ(β·Δ)
    torch.testing.assert_close(trl_dpo_loss(DPOLossType.SIGMOID, beta, tmp_path), expected)
    torch.testing.assert_close(
        trl_dpo_loss(DPOLossType("sigmoid"), 0.5, tmp_path), -logsig(0.5 * DELTA).mean()
    )


def test_ipo_matches_closed_form(tmp_path) -> None:
    beta = 0.1
    expected = ((DELTA - 1 / (2 * beta)) ** 2).mean()  # (Δ − 1/(2β))², one-token completions
    torch.testing.assert_close(trl_dpo_loss(DPOLossType.IPO, beta, tmp_path), expected)


def test_ipo_normalises_log_ratios_per_token(tmp_path) -> None:
    beta, (lc, lr) = 0.25, (3, 5)
    per_token_delta = (POLICY_C - REF_C) / lc - (POLICY_R - REF_R) / lr
    expected = ((per_token_delta - 1 / (2 * beta)) ** 2).mean()
    torch.testing.assert_close(trl_dpo_loss(DPOLossType.IPO, beta, tmp_path, lengths=(lc, lr)), expected)


def test_hinge_robust_and_conservative_match_closed_forms(tmp_path) -> None:
    beta, eps = 0.2, 0.1
    ell, ell_flipped = -logsig(beta * DELTA), -logsig(-beta * DELTA)
    torch.testing.assert_close(
        trl_dpo_loss(DPOLossType.HINGE, beta, tmp_path), torch.relu(1 - beta * DELTA).mean()
    )
    torch.testing.assert_close(
        trl_dpo_loss(DPOLossType.ROBUST, beta, tmp_path, label_smoothing=eps),
        (((1 - eps) * ell - eps * ell_flipped) / (1 - 2 * eps)).mean(),
    )
    # cDPO is composed from TRL's sigmoid and robust losses; it must equal the textbook form
    for e in (eps, 0.0, 0.3):
        torch.testing.assert_close(
            trl_dpo_loss(DPOLossType.CONSERVATIVE, beta, tmp_path, label_smoothing=e),
            ((1 - e) * ell + e * ell_flipped).mean(),
        )


def test_rpo_adds_the_chosen_nll(tmp_path) -> None:
    beta, alpha = 0.1, 0.5
    expected = -logsig(beta * DELTA).mean() + alpha * -POLICY_C.mean()
    torch.testing.assert_close(trl_dpo_loss(DPOLossType.RPO, beta, tmp_path, rpo_alpha=alpha), expected)


def test_simpo_maps_onto_trl_cpo_loss(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to=[],
        **DPOLossType.SIMPO.trl_args(2.0, simpo_gamma=1.0),
    )
    assert args.cpo_alpha == 0.0  # pure SimPO: no behaviour-cloning term
    stub = SimpleNamespace(
        alpha=args.alpha,
        beta=args.beta,
        loss_type=args.loss_type,
        simpo_gamma=args.simpo_gamma,
        label_smoothing=args.label_smoothing,
        accelerator=SimpleNamespace(device="cpu"),
    )
    avg_c, avg_r = POLICY_C / 4, POLICY_R / 6  # SimPO's rewards are mean token log-probs
    losses, _, _ = CPOTrainer.cpo_loss(stub, avg_c, avg_r)
    torch.testing.assert_close(losses, -logsig(2.0 * (avg_c - avg_r) - 1.0))  # −log σ(β·Δavg − γ)


def test_needs_reference_model() -> None:
    reference_free = {t for t in DPOLossType if not t.needs_reference_model}
    assert reference_free == {DPOLossType.SIMPO, DPOLossType.CPO}
    assert DPOLossType("sigmoid").needs_reference_model and DPOLossType.IPO.needs_reference_model
    assert DPOLossType.SIMPO.default_beta == 2.0 and DPOLossType.SIGMOID.default_beta == 0.1


def test_every_loss_type_maps_to_a_trl_loss() -> None:
    from trl import DPOConfig as TRLDPOConfig

    known = set(
        TRLDPOConfig.__dataclass_fields__["loss_type"]
        .metadata["help"]
        .replace("`", "")
        .replace("'", "")
        .replace(",", " ")
        .replace(".", " ")
        .split()
    )
    for loss_type in DPOLossType:
        trl = loss_type.trl_args(0.1)["loss_type"]
        if loss_type.needs_reference_model:
            assert set(trl) <= known, (loss_type, trl)
        else:
            assert trl in ("simpo", "sigmoid")


def test_unknown_loss_type_is_a_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"loss_type.*'sigmod'.*did you mean 'sigmoid'"):
        DPO({"loss_type": "sigmod"})
    with pytest.raises(ConfigError, match="unknown config key 'betta'.*did you mean 'beta'"):
        DPO({"betta": 0.1})


@pytest.mark.parametrize(
    "bad",
    [
        {"beta": 0.0},
        {"loss_type": "robust", "label_smoothing": 0.5},
        {"loss_type": "exo_pair", "label_smoothing": 0.0},
        {"kl": {"n": -1}},
    ],
)
def test_bad_values_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError):
        DPO(bad)


def test_config_defaults_and_string_loss_type() -> None:
    cfg = DPO({"loss_type": "simpo"}).config
    assert cfg.loss_type is DPOLossType.SIMPO and cfg.resolved_beta == 2.0
    assert DPOConfig(loss_type="ipo", beta=0.3).resolved_beta == 0.3  # type: ignore[arg-type]
    assert DPOConfig().data.source == "testbed:preferences"


def test_preference_rows_are_conversational() -> None:
    record = {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5", "margin": None}
    (row,) = preference_rows([record])
    assert row == {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }


def _tiny_model_and_tokenizer():
    from alignlab.models.builders import TinySize, build_llama
    from alignlab.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["What is 3 plus 4? The answer is 7."] * 20, vocab_size=280)
    model = build_llama(
        TinySize(32, 64, 1, 2),
        len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return model, tok


def test_kl_to_reference_is_zero_for_the_same_model_and_positive_after_a_change() -> None:
    model, tok = _tiny_model_and_tokenizer()
    prompts = ["What is 3 plus 4?", "What is 4 plus 3 plus 3?"]
    same = kl_to_reference(model, tok, prompts, copy.deepcopy(model), max_new_tokens=6)
    assert same["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)
    assert same["kl_to_reference_k3"] == pytest.approx(0.0, abs=1e-6)
    assert 1 <= same["kl_response_tokens"] <= 6
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    changed = kl_to_reference(model, tok, prompts, reference, max_new_tokens=6)
    assert changed["kl_to_reference_k3"] > 0 and math.isfinite(changed["kl_to_reference"])


def test_kl_to_reference_disables_the_adapter_when_no_reference_is_given() -> None:
    from peft import LoraConfig, get_peft_model

    model, tok = _tiny_model_and_tokenizer()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    fresh = kl_to_reference(peft_model, tok, ["What is 3 plus 4?"], None, max_new_tokens=4)
    assert fresh["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = kl_to_reference(peft_model, tok, ["What is 3 plus 4?"], None, max_new_tokens=4)
    assert moved["kl_to_reference_k3"] > 0
