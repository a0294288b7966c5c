from alignlab.models.generation import left_pad
from alignlab.models.tokenizer import ROLE_TOKENS, train_bpe_tokenizer

TEXT = ["What is 3 plus 4? The answer is 7.", "Reverse the words cat dog sun: sun dog cat."] * 30


def test_bpe_tokenizer_round_trips_and_has_single_token_specials():
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    ids = tok("The answer is 7.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "The answer is 7."
    for special in ROLE_TOKENS + ("</s>", "<pad>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok("héllo ✓", add_special_tokens=False)["input_ids"]  # byte-level: nothing unknown


def test_chat_template_masks_only_assistant_tokens():
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    msgs = [
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "The answer is 7."},
    ]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(assistant) == "The answer is 7.</s>"
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|user|>What is 3 plus 4?<|assistant|>"


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
