import torch

from alignlab.models.builders import TinySize, build_llama
from alignlab.models.tokenizer import train_bpe_tokenizer
from alignlab.stages.pretrain import VocabGroup, extend_vocabulary

TEXT = ["What is 3 plus 4? The answer is 7."] * 20


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


def test_add_tokens_resizes_and_initialises_new_rows_at_the_mean():
    model, tok = _model_and_tok()
    old = len(tok)
    mean = model.get_input_embeddings().weight.detach().mean(0).clone()
    added = extend_vocabulary(model, tok, VocabGroup(add_tokens=["zorblax", "quennik"]), [])
    assert len(added) == 2 and len(tok) == old + 2
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == old + 2
    assert torch.allclose(emb[old], mean, atol=1e-6) and torch.allclose(emb[old + 1], mean, atol=1e-6)
    assert len(tok("zorblax", add_special_tokens=False)["input_ids"]) == 1


def test_learned_bpe_tokens_from_new_domain_text():
    model, tok = _model_and_tok()
    domain = ["photosynthesis chlorophyll photosynthesis mitochondria chlorophyll"] * 50
    before = len(tok("photosynthesis", add_special_tokens=False)["input_ids"])
    added = extend_vocabulary(model, tok, VocabGroup(train_new_tokens=20), domain)
    assert 0 < len(added) <= 20
    after = len(tok("photosynthesis", add_special_tokens=False)["input_ids"])
    assert after < before  # the new domain word now takes fewer tokens
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
