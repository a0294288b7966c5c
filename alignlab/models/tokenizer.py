"""BPE tokenizer for the tiny base: trained with `tokenizers`, wrapped for `transformers`."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

log = logging.getLogger("alignlab")

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# No newlines in the template: Jinja whitespace control would eat them. `{% generation %}` marks
# the assistant tokens, which TRL's `assistant_only_loss` needs to mask the prompt out of the loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with the alignlab chat template.

    Byte-level so any input text encodes (no unknown tokens); the role markers and BOS/EOS/PAD
    are single special tokens.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw `tokenizers.Tokenizer` as a transformers tokenizer with alignlab's specials."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=512,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def ensure_chat_ready(tokenizer) -> None:
    """Give a hub tokenizer what alignlab needs: a pad token and a chat template.

    Tokenizers without a pad token reuse EOS for padding (the usual choice for LLaMA/OPT; every
    stage reads responses by attention mask and first EOS, so pad == EOS is safe); those without
    a chat template get alignlab's, and a warning says so.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        log.warning(
            "%s has no chat template: alignlab's own is used (%s); a model trained on another "
            "format should be given its template (tokenizer.chat_template) before training",
            getattr(tokenizer, "name_or_path", None) or "the tokenizer",
            "<|user|>...<|assistant|>...EOS",
        )
        tokenizer.chat_template = CHAT_TEMPLATE
