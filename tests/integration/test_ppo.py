"""PPO end to end on the tiny SFT model: it learns, resumes exactly, stops on its guards, and uses a
reward model or LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.errors import ConfigError, TrainingError
from alignlab.stages.ppo import PPO

pytestmark = pytest.mark.integration

STEP_KEYS = {
    "step",
    "reward_score",
    "reward",
    "kl",
    "kl_coef",
    "entropy",
    "policy_loss",
    "value_loss",
    "clip_fraction",
    "approx_kl",
    "explained_variance",
    "response_length",
    "eos_fraction",
    "lr",
    "time_generation",
    "time_forward",
    "time_scoring",
    "time_training",
    "samples_per_s",
}
# a small, fast run: 8 prompts per step, short answers, no end-of-stage gold evaluation
SMALL = {
    "train": {"max_steps": 2, "lr": 1e-3, "batch_size": 8},
    "ppo": {"mini_batch_size": 4, "critic_lr": 1e-3},
    "generation": {"max_new_tokens": 12},
    "eval": {"gold": False},
    "checkpoint_every": 0,
}


def brevity_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Higher for fewer words: a reward PPO can move within a few steps."""
    return [3.0 / (1.0 + len(r.split())) for r in responses]


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


def test_ppo_raises_the_reward_and_publishes_a_plain_transformers_model(tiny_pipeline) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry, arts = tiny_pipeline
    # the same 16 prompts every step (data.limit = batch_size), so the per-step means differ by
    # what the policy learned, not by which prompts were drawn
    cfg = _config(
        output="ppo_learn",
        data={"limit": 16},
        train={"max_steps": 6, "lr": 5e-4, "batch_size": 16, "lr_scheduler": "constant"},
        ppo={"mini_batch_size": 8},
        generation={"max_new_tokens": 16},
        kl={"coef": 0.02},
        eval={"gold": True, "gold_n": 16, "gold_every": 3, "gold_every_n": 8},
    )
    art = PPO(cfg).run(registry, model=arts["sft"].ref, reward=brevity_reward)

    history = art.metrics["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert STEP_KEYS <= set(history[0])
    first = sum(h["reward_score"] for h in history[:2]) / 2
    last = sum(h["reward_score"] for h in history[-2:]) / 2
    print(
        f"\nPPO brevity reward: first two steps {first:.3f}, last two {last:.3f}; "
        f"response length {history[0]['response_length']:.1f} -> "
        f"{history[-1]['response_length']:.1f} tokens; "
        f"KL {history[-1]['kl']:.3f}; gold {[h.get('gold_score') for h in history]}"
    )
    assert last > first + 0.2, f"PPO did not raise the reward: {first:.3f} -> {last:.3f}"
    assert history[-1]["response_length"] < history[0]["response_length"]
    # the policy starts as its reference, exactly: no mixed precision inherited from the SFT fixture's
    # TRL trainer (accelerate's state is process-wide) on the policy but not on the reference
    # old log-probs from generate's KV-cached logits, reference from a full pass: equal up to rounding
    assert abs(history[0]["kl"]) < 1e-4 and history[-1]["kl"] > 1e-3
    assert all(torch.isfinite(torch.tensor([h["policy_loss"], h["value_loss"]])).all() for h in history)
    assert "gold_score" in history[2] and "gold_score" in history[5] and "gold_score" not in history[0]

    assert art.kind == "model" and art.stage == "ppo" and arts["sft"].id in art.parents
    assert art.metrics["reward_score"] == history[-1]["reward_score"]
    assert art.metrics["kl_to_reference"] == history[-1]["kl"]
    assert 0.0 <= art.metrics["gold_score"] <= 1.0 and "gold_accuracy" in art.metrics
    assert (
        art.metrics["critic_from"] == arts["sft"].ref
    )  # a reward function: the critic starts from the policy
    assert any(d["role"] == "reward_fn" and "brevity_reward" in d["source"] for d in art.data)
    assert (art.path / "report.png").stat().st_size > 1000

    before, after = _weights(arts["sft"].path), _weights(art.path)
    assert any(not torch.equal(before[k], after[k]) for k in before), "PPO did not change the parameters"
    model = AutoModelForCausalLM.from_pretrained(art.path)
    tok = AutoTokenizer.from_pretrained(art.path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 3 plus 4?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]

    again = PPO(cfg).run(registry, model=arts["sft"].ref, reward=brevity_reward)
    assert again.id == art.id  # same fingerprint: reused, not retrained


class Interrupted(Exception):
    pass


def test_a_resumed_run_matches_an_uninterrupted_one(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    # two PPO epochs, adaptive β and running score moments: every piece of state must come back
    changes = dict(
        train={"max_steps": 4},
        ppo={"epochs": 2},
        checkpoint_every=2,
        kl={"control": "adaptive", "coef": 0.05, "target": 1.0, "horizon": 100},
        reward_normalization="running",
        eval={"gold": True, "gold_n": 4, "gold_every": 2, "gold_every_n": 4},
    )
    whole = PPO(_config(output="ppo_whole", **changes)).run(
        registry, model=arts["sft"].ref, reward=brevity_reward
    )

    def stop_after_two(step: int, entry: dict) -> None:
        if step == 2:
            raise Interrupted

    cfg = _config(output="ppo_resumed", **changes)
    with pytest.raises(Interrupted):
        PPO(cfg, callbacks=[stop_after_two]).run(registry, model=arts["sft"].ref, reward=brevity_reward)
    assert registry.list("ppo_resumed") == []
    assert [p.name for p in (registry.root / ".checkpoints").glob("*/step-*")] == ["step-000002"]

    resumed = PPO(cfg).run(registry, model=arts["sft"].ref, reward=brevity_reward)
    assert resumed.metrics["resumed_from_step"] == 2
    assert not list((registry.root / ".checkpoints").glob("*/step-*"))  # removed once published

    def comparable(history: list[dict]) -> list[dict]:
        return [
            {k: v for k, v in h.items() if not k.startswith("time_") and k != "samples_per_s"}
            for h in history
        ]

    expected, got = comparable(whole.metrics["history"]), comparable(resumed.metrics["history"])
    assert [h["step"] for h in got] == [1, 2, 3, 4]
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        for key, value in e.items():
            assert g[key] == (value if value is None else pytest.approx(value, rel=1e-6, abs=1e-7)), (
                g["step"],
                key,
            )
    assert expected[-1]["kl_coef"] != expected[0]["kl_coef"]  # β did move, and moved the same way
    a, b = _weights(whole.path), _weights(resumed.path)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_kl_beyond_max_kl_stops_the_run_and_keeps_the_last_checkpoint(
    tiny_pipeline, tmp_path, monkeypatch
) -> None:
    registry, arts = tiny_pipeline
    monkeypatch.chdir(tmp_path)  # tensorboard writes runs/<name> here
    # step 1 samples from the reference itself (KL 0); step 2 follows an update with a huge learning rate
    cfg = _config(
        output="ppo_guard",
        train={"max_steps": 3, "lr": 1e-2},
        kl={"estimator": "k3"},
        max_kl=0.01,
        checkpoint_every=1,
        checkpoint_dir=str(tmp_path / "ckpt"),
        tracking={"report_to": "tensorboard"},
    )
    with pytest.raises(TrainingError, match=r"at step 2, beyond max_kl=0.01.*step-000001"):
        PPO(cfg).run(registry, model=arts["sft"].ref, reward="alignlab.testbed:gold_reward_fn")
    assert registry.list("ppo_guard") == []
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000001"]
    state = json.loads((tmp_path / "ckpt" / "step-000001" / "state.json").read_text())
    assert [h["step"] for h in state["history"]] == [1]
    assert list((tmp_path / "runs" / "ppo_guard").glob("events.out.tfevents.*"))


def _reward_model(registry, sft, name: str):
    """A reward model initialised from the SFT model (an untrained head): the shape PPO loads."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(sft.path, num_labels=1)
    tok = AutoTokenizer.from_pretrained(sft.path)
    rm.config.pad_token_id = tok.pad_token_id
    with registry.publishing(name, kind="reward_model", stage="test", parents=[sft.id]) as pub:
        rm.save_pretrained(pub.dir)
        tok.save_pretrained(pub.dir)
        pub.metrics.update(score_mean=0.0, score_std=0.5)
    return pub.artifact


def test_ppo_with_a_reward_model_starts_the_critic_from_it(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    sft = arts["sft"]
    reward_model = _reward_model(registry, sft, "ppo_test_rm")

    cfg = _config(output="ppo_rm", reward_normalization="reward_model", missing_eos_penalty=1.0)
    art = PPO(cfg).run(registry, model=sft.ref, reward=reward_model.ref)
    assert art.metrics["critic_from"] == reward_model.ref
    assert reward_model.id in art.parents and sft.id in art.parents
    assert len(art.metrics["history"]) == 2
    assert all(torch.isfinite(torch.tensor(h["value_loss"])) for h in art.metrics["history"])


def digit_safety(prompts: list[str], responses: list[str]) -> list[float]:
    """A stand-in safety reward: logit +4 without digits, -4 (sigmoid 0.02 < 0.15) with them."""
    return [-4.0 if any(c.isdigit() for c in r) else 4.0 for r in responses]


def test_ppo_combines_a_reward_model_and_a_safety_reward_by_llama2s_rule(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    sft = arts["sft"]
    helpful = _reward_model(registry, sft, "ppo_helpful_rm")
    rewards = [helpful.ref, digit_safety]
    art = PPO(_config(output="ppo_two", reward_rule="safety_first")).run(
        registry, model=sft.ref, reward=rewards
    )
    assert art.metrics["critic_from"] == helpful.ref  # critic_init=reward: the first reward model
    assert helpful.id in art.parents and "reward_2_fn" in {d["role"] for d in art.data}
    for entry in art.metrics["history"]:
        logged = {k.removeprefix("reward/") for k in entry if k.startswith("reward/")}
        assert helpful.ref in logged and "safety_share" in logged
        assert any(k.endswith("digit_safety") for k in logged), logged
        assert 0.0 <= entry["reward/safety_share"] <= 1.0
    before = len(registry.list())
    with pytest.raises(ConfigError, match="reward_normalization=reward_model uses one reward model"):
        PPO(_config(output="ppo_two_bad", reward_normalization="reward_model")).run(
            registry, model=sft.ref, reward=rewards
        )
    with pytest.raises(ConfigError, match="combines a helpfulness and a safety reward; got 3"):
        PPO(_config(output="ppo_three", reward_rule="safety_first")).run(
            registry, model=sft.ref, reward=[*rewards, brevity_reward]
        )
    assert len(registry.list()) == before


def test_lora_ppo_uses_the_base_as_reference_and_publishes_a_merged_model(tiny_pipeline) -> None:
    registry, arts = tiny_pipeline
    cfg = _config(
        output="ppo_lora", train={"max_steps": 2, "batch_size": 4}, adapter={"method": "lora", "r": 4}
    )
    art = PPO(cfg).run(registry, model=arts["sft"].ref, reward=brevity_reward)
    history = art.metrics["history"]
    # adapter off = the reference (up to the rounding of generate's KV-cached logits vs a full pass)
    assert abs(history[0]["kl"]) < 1e-4 and abs(history[1]["kl"]) > 1e-4
    assert 0 < art.metrics["trainable_parameters"] < 100_000
    assert art.kind == "model" and set(_weights(art.path)) == set(_weights(arts["sft"].path))
