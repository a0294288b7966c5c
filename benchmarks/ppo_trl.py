"""PPO contender: TRL 1.9.0's ``trl.experimental.ppo.PPOTrainer`` on the shared fixture.

Runs in the separate TRL venv (``benchmarks/.venv-trl``, made by ``make bench``), never in
alignlab's. Same models, tokenizer, prompts and settings as ``ppo_alignlab.py`` (see
``ppo_settings.py``): ``per_device_train_batch_size`` = the rollout batch with
``gradient_accumulation_steps=1`` and ``num_mini_batches`` = batch / minibatch, so that TRL takes
one optimiser step per minibatch as alignlab does; fp32, no gradient checkpointing (TRL's PPOConfig
defaults to bf16 and checkpointing), no sample generations, no saving.

Phases are timed by wrapping the module's own ``batch_generation``, ``forward`` (no-grad calls
only: the reference pass) and ``get_reward`` (the value model: forward; the reward model:
scoring); the step time comes from the trainer's ``on_step_end`` callback.

Usage:
    benchmarks/.venv-trl/bin/python benchmarks/ppo_trl.py --fixture DIR --out result.json [--steps 8 ...]
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ppo_settings import parse_args, summarise  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    fixture = Path(args.fixture)
    tok = AutoTokenizer.from_pretrained(fixture / "policy")
    tok.padding_side = "left"
    records = [json.loads(line) for line in open(fixture / "prompts.jsonl")]
    ids = [
        tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for r in records
    ]
    ids = [list(x) for x in ids if len(x) <= 128]
    dataset = Dataset.from_dict({"input_ids": ids})

    torch.manual_seed(args.seed)
    policy = AutoModelForCausalLM.from_pretrained(fixture / "policy")
    reference = AutoModelForCausalLM.from_pretrained(fixture / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(fixture / "reward", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(fixture / "reward", num_labels=1)

    # --- phase timers around TRL's own functions --------------------------------------------------
    phase = {"generation": 0.0, "forward": 0.0, "scoring": 0.0, "tokens": 0}

    def timed(name, fn, count=None):
        def wrapper(*a, **kw):
            if count is not None and not count(*a, **kw):
                return fn(*a, **kw)
            start = time.perf_counter()
            out = fn(*a, **kw)
            phase[name] += time.perf_counter() - start
            return out

        return wrapper

    generate_batches = module.batch_generation

    def batch_generation(model, queries, *a, **kw):
        start = time.perf_counter()
        query_responses, logits = generate_batches(model, queries, *a, **kw)
        phase["generation"] += time.perf_counter() - start
        response = query_responses[:, queries.shape[1] :]
        is_eos = response == tok.eos_token_id
        length = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, response.shape[1])
        phase["tokens"] += int(length.sum())  # real tokens, EOS included (as alignlab's mask counts)
        return query_responses, logits

    module.batch_generation = batch_generation
    module.forward = timed("forward", module.forward, count=lambda *a, **kw: not torch.is_grad_enabled())
    get_reward = module.get_reward
    module.get_reward = lambda model, *a, **kw: timed(
        "scoring" if model is reward else "forward", get_reward
    )(model, *a, **kw)

    steps: list[dict] = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            self.last, self.cpu = time.perf_counter(), None

        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                self.score, self.kl = logs["objective/scores"], logs["objective/kl"]

        def on_step_end(self, *a, **kw):
            now, cpu = time.perf_counter(), time.process_time()
            steps.append(
                {
                    "step_s": now - self.last,
                    "generation_s": phase["generation"],
                    "forward_s": phase["forward"],
                    "scoring_s": phase["scoring"],
                    "tokens": phase["tokens"],
                    "score": self.score,
                    "kl": self.kl,
                    "cpu_s": cpu - self.cpu if self.cpu is not None else None,
                }
            )
            phase.update(generation=0.0, forward=0.0, scoring=0.0, tokens=0)
            self.last, self.cpu = now, cpu

    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_mini_batches=args.batch // args.minibatch,
            num_ppo_epochs=args.epochs,
            total_episodes=args.steps * args.batch,
            response_length=args.response_length,
            local_rollout_forward_batch_size=args.forward_batch,
            temperature=args.temperature,
            stop_token="eos",
            missing_eos_penalty=None,
            kl_coef=args.kl_coef,
            kl_estimator="k1",
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            num_sample_generations=0,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=args.seed,
            dataloader_num_workers=0,
        )
        started = time.perf_counter()
        trainer = PPOTrainer(
            args=config,
            processing_class=tok,
            model=policy,
            ref_model=reference,
            reward_model=reward,
            value_model=value,
            train_dataset=dataset,
            eval_dataset=dataset.select(range(8)),
            callbacks=[StepTimes()],
        )
        trainer.train()
        total = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(summarise(steps, args, total, peak_mb)))


if __name__ == "__main__":
    main()
