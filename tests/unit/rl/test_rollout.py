"""Rollouts (masks, positions, log-probs, values), the PPO update and checkpoints on a tiny random LLaMA."""

from __future__ import annotations

import random

import pytest
import torch

from alignlab.errors import TrainingError
from alignlab.rl.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from alignlab.rl.losses import logprobs_from_logits
from alignlab.rl.normalization import RewardNormalization, ScoreShaper
from alignlab.rl.rollout import (
    collect_rollout,
    encode_prompt_records,
    policy_logits,
    position_ids,
    response_mask,
    step_rows,
    token_values,
)
from alignlab.rl.trainer import PPOTrainer
from alignlab.stages.ppo import GenerationSettings, PPOSettings

PROMPTS = ["What is 3 plus 4?", "What color does Mira like?", "Reverse the list owl, red, fig.", "Hi"]


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer LLaMA policy, a critic sharing its shape, and a BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignlab.models import build_llama, train_bpe_tokenizer
    from alignlab.models.builders import TinySize

    tok = train_bpe_tokenizer(
        ["What is 3 plus 4? The answer is 7.", "Mira likes the color red."] * 20, vocab_size=300
    )
    size = TinySize(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    policy = build_llama(size, len(tok), seed=0, **ids)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_labels=1,
        **ids,
    )
    critic = LlamaForSequenceClassification(config)
    return policy, critic, tok


def test_response_mask_stops_after_the_first_eos() -> None:
    eos = 2
    response = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 2, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask, ended = response_mask(response, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, True, False, True]


def test_position_ids_count_from_the_first_real_token() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


def test_left_padding_does_not_change_logprobs_or_values(tiny) -> None:
    policy, critic, _ = tiny
    seq = torch.tensor([[7, 8, 9, 10, 11, 12]])
    padded = torch.tensor([[0, 0, 0, 7, 8, 9, 10, 11, 12]])
    mask = (padded != 0).long()
    with torch.no_grad():
        alone = policy_logits(policy, seq, torch.ones_like(seq), 3, temperature=0.7)
        left = policy_logits(policy, padded, mask, 3, temperature=0.7)
        v_alone = token_values(critic, seq, torch.ones_like(seq), 3)
        v_left = token_values(critic, padded, mask, 3)
        # the value of the state before the last token = the sequence score of everything before it
        pooled = critic(input_ids=seq[:, :-1]).logits[:, 0]
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_left, v_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_alone[:, -1], pooled, atol=1e-5, rtol=1e-5)


def test_rollout_logprobs_match_what_generate_sampled_from(tiny) -> None:
    from alignlab.models.generation import left_pad

    policy, _, tok = tiny
    queries, texts, dropped = encode_prompt_records(
        tok, [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS], 64
    )
    assert dropped == 0 and texts == [[{"role": "user", "content": p}] for p in PROMPTS]
    query, query_mask = left_pad(queries, tok.pad_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy.generate(
            input_ids=query,
            attention_mask=query_mask,
            max_new_tokens=6,
            do_sample=True,
            top_k=0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        response = out.sequences[:, query.shape[1] :]
        mask, _ = response_mask(response, [tok.eos_token_id])
        ids = torch.cat([query, response], 1)
        logits = policy_logits(policy, ids, torch.cat([query_mask, mask], 1), response.shape[1])
    from_generate = logprobs_from_logits(torch.stack(out.logits, dim=1), response)
    ours = logprobs_from_logits(logits, response)
    torch.testing.assert_close(ours[mask.bool()], from_generate[mask.bool()], atol=1e-4, rtol=1e-4)


def test_score_shaper_normalises_clips_and_penalises_missing_eos() -> None:
    raw = torch.tensor([1.0, 2.0, 3.0, 10.0])
    ended = torch.tensor([True, True, False, True])
    shaper = ScoreShaper(
        RewardNormalization.REWARD_MODEL, clip=2.0, missing_eos_penalty=1.0, reference_moments=(2.0, 2.0)
    )
    assert shaper(raw, ended).tolist() == [-0.5, 0.0, 0.5 - 1.0, 2.0]
    running = ScoreShaper("running")
    out = running(raw, ended)
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6) and out.std().item() == pytest.approx(1.0)
    assert running.state_dict()["moments"]["count"] == 4


def test_step_rows_visit_every_prompt_once_per_epoch() -> None:
    rows = [i for step in range(1, 6) for i in step_rows(step, batch=4, n=10, seed=3)]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert step_rows(2, 4, 10, seed=3) == rows[4:8]  # stateless: a resumed run gets the same prompts


def _rollout(tiny, scores=None, *, chats=None, scorer=None):
    """A rollout of the tiny policy on ``chats`` (default: PROMPTS as one user turn each)."""
    policy, critic, tok = tiny
    chats = chats or [[{"role": "user", "content": p}] for p in PROMPTS]
    queries, prompts, _ = encode_prompt_records(tok, [{"prompt": c} for c in chats], 64)
    reference = type(policy)(policy.config)
    reference.load_state_dict(policy.state_dict())

    def length_scorer(prompts, responses):
        return scores if scores is not None else [float(len(r)) for r in responses]

    torch.manual_seed(0)
    rollout, seconds = collect_rollout(
        policy,
        tok,
        queries,
        prompts,
        critic=critic,
        scorer=scorer or length_scorer,
        shaper=ScoreShaper(),
        settings=GenerationSettings(max_new_tokens=6),
        reference=reference,
    )
    return rollout, seconds


def test_collect_rollout_shapes_and_reference_kl(tiny) -> None:
    rollout, seconds = _rollout(tiny)
    B, T = rollout.response.shape
    assert B == len(PROMPTS) and T <= 6 and set(seconds) == {"generation", "forward", "scoring"}
    for t in (rollout.logprobs, rollout.ref_logprobs, rollout.values, rollout.mask):
        assert t.shape == (B, T)
    # reference == policy before training; the old log-probs come from generate's own logits
    on = rollout.mask.bool()
    torch.testing.assert_close(rollout.logprobs[on], rollout.ref_logprobs[on], rtol=1e-4, atol=1e-5)
    assert (rollout.logprobs[~on] == 0).all()
    assert rollout.raw_scores.tolist() == [float(len(r)) for r in rollout.responses]
    half = rollout.select(torch.tensor([2, 0]))
    assert half.prompts == [rollout.prompts[2], rollout.prompts[0]]
    assert torch.equal(half.response[1], rollout.response[0])


def test_a_reward_model_scores_every_turn_and_a_reward_function_the_last_user_turn(tiny) -> None:
    import copy

    from alignlab.rewards import RewardModelScorer

    _, critic, tok = tiny
    chat = [
        {"role": "user", "content": "Mira likes the color red."},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "What color does Mira like?"},
    ]
    assert encode_prompt_records(tok, [{"prompt": chat}], 64)[1] == [chat]
    seen: list[str] = []

    def reward_fn(prompts, responses):
        seen.extend(prompts)
        return [0.0] * len(responses)

    reward_model = RewardModelScorer(critic, copy.deepcopy(tok))
    scored, _ = _rollout(tiny, chats=[chat], scorer=reward_model)
    _rollout(tiny, chats=[chat], scorer=reward_fn)
    raw, response = scored.raw_scores[0].item(), scored.responses[0]
    assert raw == pytest.approx(reward_model([chat], [response])[0], abs=1e-6)
    assert raw != pytest.approx(reward_model([chat[-1]["content"]], [response])[0], abs=1e-6)
    assert seen == ["What color does Mira like?"]


def test_generation_logprobs_equal_a_forward_pass_at_any_temperature(tiny) -> None:
    policy, _, tok = tiny
    queries, _, _ = encode_prompt_records(
        tok, [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS], 64
    )
    from alignlab.models.generation import left_pad
    from alignlab.rl.rollout import sample_with_logprobs

    query, query_mask = left_pad(queries, tok.pad_token_id)
    for temperature, batch_size in (
        (1.0, 64),
        (0.7, 3),
    ):  # batch 3: two generation chunks of different widths
        torch.manual_seed(0)
        settings = GenerationSettings(max_new_tokens=6, temperature=temperature, batch_size=batch_size)
        response, logprobs = sample_with_logprobs(
            policy, query, query_mask, settings, [tok.eos_token_id], tok.pad_token_id
        )
        mask, _ = response_mask(response, [tok.eos_token_id])
        response = torch.where(mask.bool(), response, tok.pad_token_id)
        ids = torch.cat([query, response], dim=1)
        attn = torch.cat([query_mask, mask], dim=1)
        with torch.no_grad():
            expected = logprobs_from_logits(
                policy_logits(policy, ids, attn, response.shape[1], temperature), response
            )
        on = mask.bool()
        torch.testing.assert_close(logprobs[on], expected[on], rtol=1e-4, atol=1e-5)


def test_update_starts_on_policy_and_changes_parameters(tiny) -> None:
    policy, critic, _ = tiny
    rollout, _ = _rollout(tiny)
    before = [p.detach().clone() for p in policy.parameters()]
    trainer = PPOTrainer(policy, critic, PPOSettings(mini_batch_size=len(rollout)), lr=1e-3, total_updates=1)
    stats = trainer.update(rollout, trainer.experience(rollout, kl_coef=0.05), step=1)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(
        0, abs=1e-6
    )
    assert trainer.updates == 1 and all(torch.isfinite(torch.tensor(v)) for v in stats.values() if v == v)
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_non_finite_loss_stops_before_any_step(tiny) -> None:
    policy, critic, _ = tiny
    rollout, _ = _rollout(tiny, scores=[float("nan")] * len(PROMPTS))
    trainer = PPOTrainer(policy, critic, PPOSettings(whiten_advantages=False), lr=1e-3, total_updates=1)
    before = [p.detach().clone() for p in policy.parameters()]
    with pytest.raises(TrainingError, match="non-finite PPO loss at step 3"):
        trainer.update(rollout, trainer.experience(rollout, kl_coef=0.05), step=3)
    assert all(torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_a_new_checkpoint_replaces_the_older_ones(tiny, tmp_path) -> None:
    policy, _, _ = tiny
    first = save_checkpoint(tmp_path, 1, modules={"policy": policy}, torch_states={}, state={})
    second = save_checkpoint(tmp_path, 2, modules={"policy": policy}, torch_states={}, state={})
    assert latest_checkpoint(tmp_path) == second and not first.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]  # no temporary folder left


def test_checkpoint_restores_exact_state(tiny, tmp_path) -> None:
    policy, critic, _ = tiny
    trainer = PPOTrainer(policy, critic, PPOSettings(), lr=1e-3, total_updates=10)
    rollout, _ = _rollout(tiny)
    trainer.update(rollout, trainer.experience(rollout, kl_coef=0.05), step=1)
    saved = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer_state = trainer.state_dict()
    torch.manual_seed(123)
    random.seed(5)
    save_checkpoint(
        tmp_path,
        1,
        modules={"policy": policy, "critic": critic},
        torch_states={"trainer": optimizer_state},
        state={"history": [{"step": 1}], "run_key": "k"},
    )
    expected = (torch.rand(3), random.random())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path), modules={"policy": policy, "critic": critic})
    restore_rng(ckpt)
    assert (torch.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])
    assert all(torch.equal(saved[n], p) for n, p in policy.named_parameters())
    assert ckpt.step == 1 and ckpt.state["history"] == [{"step": 1}] and ckpt.state["run_key"] == "k"
    fresh = PPOTrainer(policy, critic, PPOSettings(), lr=1e-3, total_updates=10)
    fresh.load_state_dict(ckpt.torch_states["trainer"])
    assert fresh.updates == trainer.updates
    for a, b in zip(
        fresh.optimizer.state_dict()["state"].values(), optimizer_state["optimizer"]["state"].values()
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_ptx_term_and_entropy_bonus_join_the_loss(tiny) -> None:
    from alignlab.rl.trainer import PTXBatches

    policy, critic, tok = tiny
    rollout, _ = _rollout(tiny)
    ptx = PTXBatches.from_texts(
        ["3 plus 4 is 7.", "Mira likes the color red.", "red"], tok, batch_size=2, max_length=6, seed=0
    )
    ids, mask = ptx.batch(0)
    assert ids.shape[0] == 2 and ids.shape[1] <= 6 and mask[:, 0].all()  # right-padded, cut to max_length
    assert (
        ptx.batch(3)[0].tolist() == ptx.batch(0)[0].tolist()
    )  # 3 texts, 2 per batch: cycles after 3 batches
    trainer = PPOTrainer(
        policy,
        critic,
        PPOSettings(mini_batch_size=2, entropy_coef=0.01),
        lr=1e-3,
        total_updates=2,
        ptx=ptx,
        ptx_coef=0.5,
    )
    stats = trainer.update(rollout, trainer.experience(rollout, kl_coef=0.05), step=1)
    assert stats["ptx_loss"] > 0 and trainer.ptx_batches == 2 and trainer.updates == 2


def test_fresh_accelerator_does_not_inherit_an_earlier_stage_precision() -> None:
    from accelerate import Accelerator

    from alignlab.models.accelerator import fresh_accelerator, release_accelerator

    release_accelerator()  # whatever the tests before left
    Accelerator(mixed_precision="bf16", cpu=True)  # what a TRL trainer leaves behind (bf16 by default)
    assert fresh_accelerator().mixed_precision == "no"
    release_accelerator()
    assert Accelerator(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"  # no conflict after PPO
    release_accelerator()
