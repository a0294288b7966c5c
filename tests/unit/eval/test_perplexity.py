import math

import torch
import torch.nn.functional as F

from alignlab.data.packing import pack_documents
from alignlab.eval.perplexity import perplexity
from alignlab.models.builders import TinySize, build_llama


def test_perplexity_is_exp_of_mean_token_nll_by_hand():
    model = build_llama(TinySize(32, 64, 1, 2), vocab_size=50, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    chunks = pack_documents([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], seq_len=6, eos_id=2, pad_id=0)
    out = perplexity(model, chunks, batch_size=1)  # batches of one: a per-batch mean would differ
    nll, n = 0.0, 0
    with torch.no_grad():
        for c in chunks:
            real = sum(c["attention_mask"])
            ids = torch.tensor([c["input_ids"][:real]])
            logp = F.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
            for t in range(real - 1):
                nll -= logp[t, ids[0, t + 1]].item()
                n += 1
    assert out["tokens"] == n
    assert math.isclose(out["perplexity"], math.exp(nll / n), rel_tol=1e-4)
