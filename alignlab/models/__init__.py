"""Model loading (artifact | path | hub id), tiny LLaMA builders, tokenizer, generation."""

from alignlab.models.builders import TINY_SIZES, build_llama, tiny_llama
from alignlab.models.generation import generate
from alignlab.models.loading import load_causal_lm, load_tokenizer, save_model
from alignlab.models.tokenizer import CHAT_TEMPLATE, train_bpe_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "TINY_SIZES",
    "build_llama",
    "generate",
    "load_causal_lm",
    "load_tokenizer",
    "save_model",
    "tiny_llama",
    "train_bpe_tokenizer",
]
