"""The critic-free stage end to end on the tiny SFT model: a verifiable reward goes up, a resumed
run matches an uninterrupted one, several rewards are logged each, bad input fails before training."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.stages.grpo import GRPO

pytestmark = pytest.mark.integration

SMALL = {
    "train": {"max_steps": 2, "lr": 1e-3, "batch_size": 4},
    "grpo": {"num_generations": 4},
    "generation": {"max_new_tokens": 12},
    "eval": {"gold": False},
    "checkpoint_every": 0,
}


def short_answer(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for an answer of at most four words: verifiable, and reachable within a few steps."""
    return [float(len(r.split()) <= 4) for r in responses]


def _config(**changes) -> dict:
    cfg = json.loads(json.dumps(SMALL))
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_grpo_raises_a_verifiable_reward_and_publishes_a_plain_model(tiny_pipeline) -> None:
    from transformers import AutoModelForCausalLM

    registry, arts = tiny_pipeline
    cfg = _config(
        output="grpo_learn",
        data={"limit": 16},
        train={"max_steps": 8, "lr": 2e-3, "batch_size": 8, "lr_scheduler": "constant"},
        grpo={"num_generations": 4, "mini_batch_size": 16},
        generation={"max_new_tokens": 16},
    )
    art = GRPO(cfg).run(registry, model=arts["sft"].ref, reward=short_answer)
    history = art.metrics["history"]
    assert [h["step"] for h in history] == list(range(1, 9))
    assert {
        "reward_score",
        "group_reward_std",
        "equal_group_fraction",
        "entropy",
        "clip_fraction_low",
        "clip_fraction_high",
        "response_length",
        "policy_loss",
        "lr",
    } <= set(history[0])
    first = sum(h["reward_score"] for h in history[:2]) / 2
    last = sum(h["reward_score"] for h in history[-2:]) / 2
    print(f"\nGRPO short-answer reward: first two steps {first:.3f}, last two {last:.3f}")
    assert last > first + 0.2, f"GRPO did not raise the reward: {first:.3f} -> {last:.3f}"
    assert art.kind == "model" and art.stage == "grpo" and arts["sft"].id in art.parents
    assert any(d["role"] == "reward_fn" and "short_answer" in d["source"] for d in art.data)
    before, after = _weights(arts["sft"].path), _weights(art.path)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert AutoModelForCausalLM.from_pretrained(art.path).num_parameters() > 0
    assert GRPO(cfg).run(registry, model=arts["sft"].ref, reward=short_answer).id == art.id  # reused


class Interrupted(Exception):
    pass


def test_a_resumed_grpo_run_matches_an_uninterrupted_one(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    # dynamic sampling moves the prompt cursor by a varying amount: it must come back too
    changes = dict(
        train={"max_steps": 4},
        grpo={"num_generations": 4, "dynamic_sampling": True, "kl_coef": 0.05, "mini_batch_size": 8},
        checkpoint_every=2,
    )
    whole = GRPO(_config(output="grpo_whole", **changes)).run(
        registry, model=arts["sft"].ref, reward=short_answer
    )

    def stop_after_two(step: int, entry: dict) -> None:
        if step == 2:
            raise Interrupted

    cfg = _config(output="grpo_resumed", **changes)
    with pytest.raises(Interrupted):
        GRPO(cfg, callbacks=[stop_after_two]).run(registry, model=arts["sft"].ref, reward=short_answer)
    assert registry.list("grpo_resumed") == []
    resumed = GRPO(cfg).run(registry, model=arts["sft"].ref, reward=short_answer)
    assert resumed.metrics["resumed_from_step"] == 2

    def comparable(history: list[dict]) -> list[dict]:
        return [
            {k: v for k, v in h.items() if not k.startswith("time_") and k != "samples_per_s"}
            for h in history
        ]

    for g, e in zip(
        comparable(resumed.metrics["history"]), comparable(whole.metrics["history"]), strict=True
    ):
        assert g.keys() == e.keys()
        for key, value in e.items():
            assert g[key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-7)), (
                g["step"],
                key,
            )
    a, b = _weights(whole.path), _weights(resumed.path)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert whole.metrics["history"][-1]["kl"] > 0  # β > 0 loaded a reference and measured the drift


def test_several_rewards_are_summed_with_weights_and_logged_each(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    cfg = _config(
        output="grpo_two", reward_weights=[1.0, 0.5], grpo={"num_generations": 2, "advantage": "rloo"}
    )
    art = GRPO(cfg).run(
        registry, model=arts["sft"].ref, reward=[short_answer, "alignlab.testbed:correctness"]
    )
    entry = art.metrics["history"][0]
    by_name = {k: v for k, v in entry.items() if k.startswith("reward/")}
    assert len(by_name) == 2, by_name
    a, b = by_name.values()
    assert entry["reward_score"] == pytest.approx(a + 0.5 * b, abs=1e-5)
    roles = {d["role"] for d in art.data}
    assert {"reward_fn", "reward_2_fn"} <= roles


@pytest.mark.parametrize(
    ("changes", "reward", "message"),
    [
        ({"grpo": {"num_generations": 1}}, short_answer, "num_generations=1: a group needs at least 2"),
        ({"reward_weights": [1.0, 2.0]}, short_answer, "reward_weights has 2 weights for 1 rewards"),
        ({}, lambda prompts: [0.0], "a reward function is called as fn\\(prompts"),
        (
            {"train": {"batch_size": 0}},
            short_answer,
            "'train.batch_size': must be a finite number >= 1, got 0",
        ),
    ],
)
def test_bad_input_is_a_clear_error_before_training(tiny_pipeline, changes, reward, message) -> None:
    registry, arts = tiny_pipeline
    before = len(registry.list())
    with pytest.raises(ConfigError, match=message):
        GRPO(_config(output="grpo_bad", **changes)).run(registry, model=arts["sft"].ref, reward=reward)
    assert len(registry.list()) == before


def test_a_reward_returning_the_wrong_length_is_named(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    with pytest.raises(ConfigError, match="returned 1 scores for 16 responses"):
        GRPO(_config(output="grpo_len")).run(registry, model=arts["sft"].ref, reward=lambda p, r: [1.0])
    assert registry.list("grpo_len") == []


def digit_safety(prompts: list[str], responses: list[str]) -> list[float]:
    """A stand-in safety reward model: a logit of +4 (safe) for a response without digits, -4
    (sigmoid 0.02, below LLaMA-2's 0.15) for one with them."""
    return [-4.0 if any(c.isdigit() for c in r) else 4.0 for r in responses]


def test_safety_first_follows_the_safety_reward_where_it_flags_and_is_learned(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    cfg = _config(
        output="grpo_safety",
        data={"limit": 16},
        train={"max_steps": 8, "lr": 2e-3, "batch_size": 8, "lr_scheduler": "constant"},
        grpo={"num_generations": 4, "mini_batch_size": 16},
        generation={"max_new_tokens": 16},
        reward_rule="safety_first",
    )
    art = GRPO(cfg).run(registry, model=arts["sft"].ref, reward=[short_answer, digit_safety])
    history = art.metrics["history"]
    flagged = [h["reward/safety_share"] for h in history]
    for h in history:  # each response scores -4 when flagged, else its 0/1 helpfulness
        share = h["reward/safety_share"]
        assert -4.0 * share <= h["reward_score"] <= -4.0 * share + (1 - share) + 1e-6
    first, last = sum(flagged[:2]) / 2, sum(flagged[-2:]) / 2
    score_first = sum(h["reward_score"] for h in history[:2]) / 2
    score_last = sum(h["reward_score"] for h in history[-2:]) / 2
    print(
        f"\nsafety-first: flagged share {first:.3f} -> {last:.3f}; score {score_first:.3f} -> {score_last:.3f}"
    )
    assert last < first - 0.1, "the policy did not learn to avoid what the safety reward flags"
    assert score_last > score_first + 0.2
    assert {"reward_fn", "reward_2_fn"} <= {d["role"] for d in art.data}
