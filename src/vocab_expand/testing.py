"""Models for testing expansion: the negative-logit twin of a model.

Models such as GPT-2 small and Gemma-2b have logits that are all strongly negative, and that is where zero
or random rows collapse generation. Their weights can't be fetched offline, so we build the same situation
exactly from any model: untie the output head and subtract alpha * u from every head row, u being the unit
mean of the final hidden states over a corpus. Every logit of a prefix then shifts by the same -alpha (h.u),
so the softmax, and the model's distribution, are unchanged, while every logit drops below -margin.

Left out: measuring anything (diagnostics.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .corpus import Corpus
from .diagnostics import heldout_sample, start_token_id
from .forward import run_pass
from .resize import embedding_layout, untie

# Scale alpha beyond the minimum the train sample needs, so unseen text stays below the margin too.
SAFETY = 1.5


@torch.no_grad()
def negative_logit_twin(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    margin: float = 20.0,
    *,
    max_tokens: int = 4000,
) -> nn.Module:
    """A copy of ``model`` with the same next-token distribution whose logits are all below -margin.

    alpha = SAFETY * max over sampled positions of (max logit + margin) / (h.u). Raises ValueError if some
    hidden state has h.u <= 0 (the shift would then raise its logits, not lower them).
    """
    sample = Corpus(corpus.name, [], corpus.train or corpus.heldout)
    docs = heldout_sample(sample, tokenizer, max_tokens)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    stats = run_pass(model, ids, len(tokenizer), start_token_id(tokenizer))
    mean = stats.hidden.mean(0)
    u = mean / mean.norm()
    projection = stats.hidden @ u
    if projection.min() <= 0:
        raise ValueError("some final hidden states point away from their mean (h.u <= 0); no uniform shift lowers every logit")
    alpha = SAFETY * ((stats.max_logit + margin) / projection).max().clamp_min(0).item()
    twin = copy.deepcopy(model)
    layout = embedding_layout(twin)
    if layout.tied:
        untie(twin, layout)
    head = layout.output.weight
    head.sub_((alpha * u).to(head.dtype))
    twin.config.negative_logit_twin = {"alpha": alpha, "margin": margin}
    return twin
