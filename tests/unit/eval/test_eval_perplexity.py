"""Bits per character and per-token perplexity of raw documents, checked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.data.packing import IGNORE_INDEX
from alignlab.errors import DataError
from alignlab.eval.perplexity import document_separator, pack_for_scoring, text_perplexity
from alignlab.models import train_bpe_tokenizer
from alignlab.models.builders import TinySize, build_llama

TEXTS = ["Mira lives in Oakvale.", "3 plus 4 is 7.", "Tomas has a red cat and a blue bird."]


@pytest.fixture(scope="module")
def lm():
    tok = train_bpe_tokenizer(TEXTS * 3, vocab_size=300)
    model = build_llama(
        TinySize(32, 64, 1, 2),
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return model, tok


def test_bits_per_char_is_total_nll_over_ln2_over_characters_by_hand(lm):
    model, tok = lm
    out = text_perplexity(model, tok, TEXTS, seq_len=128)
    sep = document_separator(tok)
    assert sep == tok.eos_token_id  # this tokenizer adds no BOS: documents follow EOS, as in pretraining
    stream, scored = [], []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        stream.append(sep)
        scored.append(False)
        stream += ids
        scored += [True] * len(ids)
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([stream])).logits[0], dim=-1)
    nll = -sum(logp[t - 1, stream[t]].item() for t in range(1, len(stream)) if scored[t])
    n_tokens = sum(scored)
    chars = sum(len(t) for t in TEXTS)
    assert out.tokens == n_tokens and out.characters == chars and out.documents == 3
    assert math.isclose(out.bits_per_char, nll / math.log(2) / chars, rel_tol=1e-4)
    assert math.isclose(out.perplexity, math.exp(nll / n_tokens), rel_tol=1e-4)
    assert math.isclose(out.bits_per_token, nll / n_tokens / math.log(2), rel_tol=1e-4)
    assert out.to_metrics()["heldout_bits_per_char"] == out.bits_per_char


def test_short_chunks_score_every_document_token_exactly_once(lm):
    model, tok = lm
    long = text_perplexity(model, tok, TEXTS, seq_len=128)
    short = text_perplexity(model, tok, TEXTS, seq_len=5)
    assert short.tokens == long.tokens and short.characters == long.characters


def test_pack_for_scoring_overlaps_chunks_by_one_token():
    chunks = pack_for_scoring([[5, 6, 7], [8, 9]], seq_len=4, separator=2, pad_id=0)
    # stream 2 5 6 7 2 8 9, stride 3: the 7 ends chunk one (a label) and starts chunk two (context only)
    assert [c["input_ids"] for c in chunks] == [[2, 5, 6, 7], [7, 2, 8, 9]]
    assert [c["labels"] for c in chunks] == [[IGNORE_INDEX, 5, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8, 9]]
    targets = [lab for c in chunks for lab in c["labels"][1:] if lab != IGNORE_INDEX]
    assert targets == [5, 6, 7, 8, 9]


def test_no_text_is_an_error(lm):
    model, tok = lm
    with pytest.raises(DataError, match="no text"):
        text_perplexity(model, tok, ["", ""])
