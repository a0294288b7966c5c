"""Assistant-token masks for any chat template (alignlab.models.chat_template).

Golden checks: the masked tokens are exactly each assistant turn's content followed by its
end-of-turn token, for alignlab's template, ChatML on alignlab's tokenizer, and SmolLM2's own
tokenizer and template (the ``smollm2`` cases belong to the real-model group).
"""

import copy

import pytest

from alignlab.models.chat_template import (
    ChatTemplateError,
    chat_messages,
    tokenize_chat,
    tokenize_conversations,
)
from alignlab.models.tokenizer import train_bpe_tokenizer

TEXT = ["What is 3 plus 4? The answer is 7.", "Reverse the words cat dog sun: sun dog cat."] * 30

# ChatML as SmolLM2 writes it (no {% generation %} markers), on alignlab's BPE tokenizer
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# renders earlier assistant turns as "(earlier)": a prefix is then not a prefix of the whole
FORGETFUL = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}"
    "<|assistant|>(earlier){{ eos_token }}{% elif message['role'] == 'assistant' %}"
    "<|assistant|>{{ message['content'] }}{{ eos_token }}{% else %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SINGLE = [
    {"role": "user", "content": "What is 3 plus 4?"},
    {"role": "assistant", "content": "The answer is 7."},
]
MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "Add 3 and 4."},
    {"role": "assistant", "content": "7"},
]
SYSTEM = [{"role": "system", "content": "Be terse."}, *SINGLE]
TOOL = [
    {"role": "user", "content": "Reverse cat dog."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "reverse", "arguments": {"words": "cat dog"}}}
        ],
    },
    {"role": "tool", "content": "dog cat", "name": "reverse"},
    {"role": "assistant", "content": "dog cat"},
]


@pytest.fixture(scope="module")
def tok():
    tok = train_bpe_tokenizer(TEXT, vocab_size=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tok


def _spans(tok, chat):
    """The masked tokens, one list per contiguous run."""
    spans, run = [], []
    for token, m in zip(chat.input_ids, chat.assistant_mask):
        if m:
            run.append(token)
        elif run:
            spans.append(run)
            run = []
    return spans + ([run] if run else [])


def _expected(tok, messages, end_token):
    """Golden: each assistant turn's content tokens, then its end-of-turn token."""
    end = tok.convert_tokens_to_ids(end_token)
    return [
        tok(m["content"], add_special_tokens=False)["input_ids"] + [end]
        for m in chat_messages(tok, messages)
        if m["role"] == "assistant"
    ]


@pytest.mark.parametrize("messages", [SINGLE, MULTI, SYSTEM, TOOL], ids=["single", "multi", "system", "tool"])
@pytest.mark.parametrize("template", ["alignlab", "chatml", pytest.param("smollm2", marks=pytest.mark.real)])
def test_masked_tokens_are_each_assistant_turn_and_its_end_of_turn_token(tok, request, messages, template):
    end_token = "</s>" if template == "alignlab" else "<|im_end|>"
    if template == "chatml":
        tok = _copy(tok)
        tok.chat_template = CHATML
    elif template == "smollm2":
        tok = request.getfixturevalue("smollm2_tokenizer")
    chat = tokenize_chat(tok, messages, stop_ids=[tok.convert_tokens_to_ids(end_token)])
    assert len(chat.input_ids) == len(chat.assistant_mask)
    assert _spans(tok, chat) == _expected(tok, messages, end_token)
    # what is left out: the system prompt (SmolLM2's default one when none is given), every
    # header, the user turns, and what follows each end-of-turn token
    unmasked = tok.decode([t for t, m in zip(chat.input_ids, chat.assistant_mask) if not m])
    assert "What is 3 plus 4?" in unmasked or "Hi" in unmasked or "Reverse" in unmasked
    if template == "smollm2":
        assert unmasked.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in unmasked


def _copy(tok):
    return copy.deepcopy(tok)


def test_tool_calls_are_written_into_the_turn_when_the_template_ignores_them(tok):
    chat = tokenize_chat(tok, TOOL, stop_ids=[tok.eos_token_id])
    first = tok.decode(_spans(tok, chat)[0])
    assert first == '[{"arguments": {"words": "cat dog"}, "name": "reverse"}]</s>'


def test_the_alignlab_template_agrees_with_its_generation_markers(tok):
    for messages in (SINGLE, MULTI, SYSTEM):
        ours = tokenize_chat(tok, messages, stop_ids=[tok.eos_token_id])
        theirs = tok.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert ours.input_ids == list(theirs["input_ids"])
        assert ours.assistant_mask == list(theirs["assistant_masks"])


def test_a_template_that_rewrites_earlier_turns_is_refused_with_what_to_do(tok):
    tok = _copy(tok)
    tok.chat_template = FORGETFUL
    tokenize_chat(tok, SINGLE, stop_ids=[tok.eos_token_id])  # one turn: nothing earlier to rewrite
    with pytest.raises(ChatTemplateError) as err:
        tokenize_conversations(
            tok, [{"messages": SINGLE}, {"messages": MULTI}], stop_ids=[tok.eos_token_id], source="d.jsonl"
        )
    message = str(err.value)
    assert "d.jsonl row 2" in message and "loss_on=all" in message and "{% generation %}" in message


def test_a_template_with_generation_markers_falls_back_on_them(tok):
    tok = _copy(tok)
    tok.chat_template = FORGETFUL.replace(
        "<|assistant|>{{ message['content'] }}{{ eos_token }}",
        "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}",
    )
    chat = tokenize_chat(tok, MULTI, stop_ids=[tok.eos_token_id])
    assert [tok.decode(s) for s in _spans(tok, chat)] == ["7</s>"]


def test_loss_on_all_keeps_every_token_and_no_mask(tok):
    rows = tokenize_conversations(
        tok, [{"messages": MULTI}], stop_ids=[tok.eos_token_id], assistant_only=False
    )
    assert set(rows[0]) == {"input_ids"}
    assert rows[0]["input_ids"] == tokenize_chat(tok, MULTI).input_ids


def test_a_template_without_a_stop_token_keeps_the_whole_turn_and_warns(tok, caplog):
    tok = _copy(tok)
    tok.chat_template = CHATML.replace("'<|im_end|>' + '\n'", "'\n\n'")
    rows = tokenize_conversations(tok, [{"messages": SINGLE}], stop_ids=[tok.eos_token_id])
    masked = [t for t, m in zip(rows[0]["input_ids"], rows[0]["assistant_masks"]) if m]
    assert tok.decode(masked) == "The answer is 7.\n\n"
    assert "without a stop token" in caplog.text
