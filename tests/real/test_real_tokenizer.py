"""What alignlab reads from a real tokenizer: SmolLM2's ChatML template, pad == EOS == <|im_end|>.

Most checks pair the real tokenizer with a tiny randomly initialised model of its vocabulary
(fast); generation checks use the real weights. The golden assistant masks on SmolLM2's template
are in tests/unit/models/test_chat_template.py (marked real).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from alignlab.models.generation import encode_prompts, left_pad, stop_token_ids

MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "Add 3 and 4."},
    {"role": "assistant", "content": "7"},
]


def _tiny(tok, cls=LlamaForCausalLM, **extra):
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    torch.manual_seed(0)
    return cls(config).eval()


def test_smollm2_facts_as_alignlab_reads_them(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert "{% generation %}" not in tok.chat_template  # TRL's assistant_only_loss would refuse it
    model = _tiny(tok)
    assert stop_token_ids(tok, model) == [tok.eos_token_id]
    model.generation_config.eos_token_id = [tok.eos_token_id, 0]  # a list, as LLaMA-3 writes it
    assert stop_token_ids(tok, model) == sorted([tok.eos_token_id, 0])


def test_sft_labels_through_trl_train_exactly_the_masked_tokens(smollm2_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignlab.models.chat_template import tokenize_conversations

    tok = copy.deepcopy(smollm2_tokenizer)
    rows = tokenize_conversations(tok, [{"messages": MULTI}], stop_ids=[tok.eos_token_id])
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_length=256,
        report_to=[],
        use_cpu=True,
        bf16=False,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=_tiny(tok), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    labels = trainer.train_dataset[0]["labels"]
    trained = [t for t in labels if t != -100]
    assert tok.decode(trained) == "Hello there.<|im_end|>7<|im_end|>"
    # pad == EOS: the collator pads with -100, so the real <|im_end|> labels survive padding
    batch = trainer.data_collator([trainer.train_dataset[0], {"input_ids": [1, 2], "labels": [-100, 2]}])
    assert (batch["labels"][0] == tok.eos_token_id).sum() == 2
    assert batch["labels"][1].tolist()[2:] == [-100] * (batch["labels"].shape[1] - 2)


def test_generation_stops_at_im_end_and_ppo_masks_the_padding_after_it(smollm2):
    from alignlab.models import load_causal_lm
    from alignlab.rl.rollout import response_mask, sample_with_logprobs
    from alignlab.stages.ppo import GenerationSettings

    registry, art = smollm2
    model, tok = load_causal_lm(art.ref, registry)
    query, query_mask = left_pad(encode_prompts(tok, ["What is 2 plus 3?", "Say hi."]), tok.pad_token_id)
    torch.manual_seed(0)
    settings = GenerationSettings(max_new_tokens=48, temperature=0.7, batch_size=2)
    stops = stop_token_ids(tok, model)
    response, logprobs = sample_with_logprobs(
        model.eval(), query, query_mask, settings, stops, tok.pad_token_id
    )
    mask, ended = response_mask(response, stops)
    assert ended.all()  # both answers end well within 48 tokens, at <|im_end|>
    for row, m in zip(response, mask):
        n = int(m.sum())
        assert row[n - 1] == tok.eos_token_id  # the first <|im_end|> is the last real token
        assert (row[n:] == tok.pad_token_id).all()  # what follows is padding (== <|im_end|> here)
    eos_fraction = float(ended.float().mean())
    assert eos_fraction == 1.0


def test_reward_is_read_at_the_same_token_padded_or_alone(smollm2_tokenizer):
    from alignlab.rewards import RewardModelScorer
    from alignlab.stages.reward import score
    from alignlab.stages.reward_data import Encoded, Ranking, collate, encode

    tok = copy.deepcopy(smollm2_tokenizer)
    rm = _tiny(tok, LlamaForSequenceClassification, num_labels=1)
    prompts = [[{"role": "user", "content": "What is 3 plus 4?"}], [{"role": "user", "content": "Hi"}]]
    responses = ["The answer is 7, which is the sum of three and four.", "Hello."]
    # training batches (right-padded by collate) and PPO's scorer give the same score as one alone
    enc, _ = encode([Ranking(p, [r, r + "!"]) for p, r in zip(prompts, responses)], tok, 256)
    with torch.no_grad():
        batched = score(rm, collate(enc, tok.pad_token_id))
        alone = [score(rm, collate([Encoded([ids])], tok.pad_token_id)) for e in enc for ids in e.ids]
        scorer = RewardModelScorer(rm, tok)(prompts, responses)
    assert torch.allclose(batched, torch.cat(alone), atol=1e-5)
    assert scorer == pytest.approx([batched[0].item(), batched[2].item()], abs=1e-5)
    # the score sits at the transcript's last token: the newline after <|im_end|>, not padding
    ids = enc[1].ids[0]
    assert tok.decode(ids[-2:]) == "<|im_end|>\n"


def test_truncation_keeps_the_end_for_the_reward_model_and_the_prompt_for_dpo(smollm2_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignlab.stages.dpo import preference_rows
    from alignlab.stages.reward_data import Ranking, encode

    tok = copy.deepcopy(smollm2_tokenizer)
    prompt = [{"role": "user", "content": "Count: " + " ".join(str(i) for i in range(60))}]
    enc, truncated = encode([Ranking(prompt, ["60", "61"])], tok, 32)
    assert truncated == 2 and all(len(x) == 32 for x in enc[0].ids)
    assert tok.decode(enc[0].ids[0]).endswith("assistant\n60<|im_end|>\n")  # the response and its end survive

    rows = preference_rows([{"prompt": prompt, "chosen": "60", "rejected": "61"}])
    args = DPOConfig(output_dir=str(tmp_path), max_length=256, report_to=[], use_cpu=True, bf16=False)
    trainer = DPOTrainer(
        model=_tiny(tok),
        ref_model=_tiny(tok),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    assert row["prompt_ids"] == encode_prompts(tok, [prompt])[0]  # what the policy sees when it generates
    assert tok.decode(row["chosen_ids"]) == "60<|im_end|>\n"  # the stop token is trained
    assert tok.decode(row["rejected_ids"]) == "61<|im_end|>\n"


def test_a_chinese_vocabulary_extension_of_smollm2_keeps_english_and_code(smollm2_tokenizer):
    """Issue 18 §1 on the real tokenizer (byte-level BPE, 49152 entries): learned Chinese words
    and characters become single tokens, English and code tokenize exactly as before."""
    import copy

    from alignlab.models.vocab import learned_words, merge_vocabulary, tokens_per_char

    tok = copy.deepcopy(smollm2_tokenizer)
    chinese = [
        "我们今天去北京大学参观。",
        "北京的天气很好，我们很高兴。",
        "人工智能是计算机科学的一个分支。",
    ] * 30
    other = ["The other day he said: here is the theory.", "def f(x):\n    return x ** 2  # square\n"]
    before = [tok(t, add_special_tokens=False)["input_ids"] for t in other]
    per_char = tokens_per_char(tok, chinese)
    extension = merge_vocabulary(tok, learned_words(tok, chinese, 40, max_chars=4))
    assert len(extension.words) >= 15 and extension.first_id == len(smollm2_tokenizer)
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in other] == before
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in extension.words)
    assert tokens_per_char(tok, chinese) < 0.6 * per_char
    assert tok.decode(tok(chinese[0], add_special_tokens=False)["input_ids"]) == chinese[0]
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "北京"}], tokenize=False)
