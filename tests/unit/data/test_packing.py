import pytest

from alignlab.data.packing import IGNORE_INDEX, count_tokens, pack_documents


def test_long_documents_span_chunks_and_nothing_is_lost():
    docs = [list(range(10, 23)), [30, 31], list(range(40, 45))]  # 13 + 2 + 5 tokens
    chunks = pack_documents(docs, seq_len=8, eos_id=2, pad_id=0)
    stream = [t for c in chunks for t, m in zip(c["input_ids"], c["attention_mask"]) if m]
    assert stream == docs[0] + [2] + docs[1] + [2] + docs[2] + [2]  # every token kept, EOS between docs
    assert count_tokens(chunks) == 13 + 2 + 5 + 3
    assert all(len(c["input_ids"]) == 8 for c in chunks)
    last = chunks[-1]
    n_real = sum(last["attention_mask"])
    assert last["labels"][n_real:] == [IGNORE_INDEX] * (8 - n_real)
    assert last["input_ids"][n_real:] == [0] * (8 - n_real)


def test_exact_multiple_has_no_padding_chunk():
    chunks = pack_documents([[5, 6, 7]], seq_len=4, eos_id=2, pad_id=0)
    assert len(chunks) == 1 and chunks[0]["attention_mask"] == [1, 1, 1, 1]


def test_rejects_tiny_seq_len():
    with pytest.raises(ValueError):
        pack_documents([[1]], seq_len=1, eos_id=2, pad_id=0)
