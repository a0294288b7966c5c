"""Vocabulary extension (issue 18 §1): merges appended to the model's own BPE, so that text the
base already tokenized tokenizes exactly as before, and the two training schedules."""

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.models.builders import TinySize, build_llama
from alignlab.models.tokenizer import train_bpe_tokenizer
from alignlab.models.vocab import learned_words, merge_vocabulary, split_digits, tokens_per_char
from alignlab.stages.pretrain import Pretrain, VocabGroup, extend_vocabulary

TEXT = ["What is 3 plus 4? The answer is 7. The other one is here, and there."] * 20
ENGLISH_AND_CODE = [
    "The other day he said: here is the theory.",
    "def total(items):\n    return sum(x * 2 for x in items)  # doubled\n",
    "What is 3 plus 4? The answer is 7.",
]
CHINESE = [
    "我们今天去北京大学参观。",
    "北京的天气很好，我们很高兴。",
    "人工智能是计算机科学的一个分支。",
    "中国的经济发展很快。",
] * 25


def _model_and_tok():
    tok = train_bpe_tokenizer(TEXT, vocab_size=280)
    model = build_llama(
        TinySize(32, 64, 1, 2),
        len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return model, tok


def _ids(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_add_tokens_become_single_tokens_that_never_match_inside_other_words():
    model, tok = _model_and_tok()
    before = _ids(tok, ENGLISH_AND_CODE)
    old = len(tok)
    mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    out = extend_vocabulary(model, tok, VocabGroup(add_tokens=["zorblax", " he"]), [])
    assert sorted(out["new_tokens"]) == [" he", "zorblax"]
    assert len(tok("zorblax", add_special_tokens=False)["input_ids"]) == 1
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tok) > old
    assert all(torch.allclose(emb[i], mean, atol=1e-6) for i in range(out["vocab_first_new_id"], len(tok)))
    # " he" is one token now, yet "The", "other", "here" and "there" tokenize as before: merges rank
    # after the base's, where added tokens would have split them ("T he", "ot he r")
    after = _ids(tok, ENGLISH_AND_CODE)
    changed = [t for t, a, b in zip(ENGLISH_AND_CODE, before, after) if a != b]
    assert changed == ["The other day he said: here is the theory."]
    assert "other" in tok.decode(after[0]) and tok.decode(after[0]) == ENGLISH_AND_CODE[0]
    base_tok = train_bpe_tokenizer(TEXT, vocab_size=280)
    for word in ("The", " other", " here", " theory"):
        assert _ids(tok, [word]) == _ids(base_tok, [word]), word


def test_a_chinese_extension_leaves_english_and_code_exactly_as_they_were():
    model, tok = _model_and_tok()
    before = _ids(tok, ENGLISH_AND_CODE)
    out = extend_vocabulary(model, tok, VocabGroup(train_new_tokens=40, max_token_chars=4), CHINESE)
    assert _ids(tok, ENGLISH_AND_CODE) == before
    words = out["new_tokens"]
    assert len(words) >= 20 and any(len(w) == 1 for w in words), words  # single characters too
    assert all("\ufffd" not in w and len(w) <= 4 for w in words)
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    assert out["tokens_per_char_after"] < 0.6 * out["tokens_per_char_before"]
    assert all(tok.decode(ids) == text for ids, text in zip(_ids(tok, CHINESE[:4]), CHINESE[:4]))
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_learned_tokens_from_new_domain_text_shorten_its_words():
    model, tok = _model_and_tok()
    domain = ["photosynthesis chlorophyll photosynthesis mitochondria chlorophyll"] * 50
    before = len(tok(" photosynthesis", add_special_tokens=False)["input_ids"])
    out = extend_vocabulary(model, tok, VocabGroup(train_new_tokens=20, max_token_chars=16), domain)
    assert 0 < len(out["new_tokens"]) <= 20
    assert len(tok(" photosynthesis", add_special_tokens=False)["input_ids"]) < before


def test_split_digits_gives_one_token_per_digit_and_leaves_words_alone():
    _, tok = _model_and_tok()
    words = _ids(tok, ["The answer is here."])
    split_digits(tok)
    assert len(tok("2024", add_special_tokens=False)["input_ids"]) == 4
    assert _ids(tok, ["The answer is here."]) == words


def test_other_tokenizers_are_refused_for_learned_tokens_with_the_key():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    with pytest.raises(ConfigError, match="vocab.train_new_tokens"):
        learned_words(tok, CHINESE, 5)


def test_schedules_are_checked_against_the_adapter():
    with pytest.raises(ConfigError, match="new_rows"):
        Pretrain({"vocab": {"schedule": "new_rows"}})
    with pytest.raises(ConfigError, match="lora_embeddings"):
        Pretrain({"vocab": {"schedule": "lora_embeddings"}})
    with pytest.raises(ConfigError, match="schedule=lora_embeddings"):
        Pretrain({"vocab": {"add_tokens": ["x"]}, "adapter": {"method": "lora"}})
    Pretrain({"vocab": {"add_tokens": ["x"], "schedule": "lora_embeddings"}, "adapter": {"method": "lora"}})


def test_merge_vocabulary_reports_words_and_entries():
    _, tok = _model_and_tok()
    ext = merge_vocabulary(tok, ["北京", "北"])
    assert ext.words == ["北", "北京"]  # shorter first: the word builds on its character
    assert ext.tokens[-1] == tok.convert_ids_to_tokens(tok("北京", add_special_tokens=False)["input_ids"])[0]
    assert tokens_per_char(tok, ["北京北京"]) == 0.5  # two tokens for four characters
