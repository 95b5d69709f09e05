"""The negative-logit twin of a model: the same distribution, with every logit strongly negative.

Models such as GPT-2 small and Gemma-2b have logits that are all strongly negative, and that is where zero
or random rows collapse generation. Their weights can't be fetched offline, so we build the same situation
exactly from any model: untie the output head and subtract alpha * u from every head row. Every logit of a
prefix then shifts by the same -alpha (h.u), so the softmax, and the model's distribution, are unchanged,
while every logit drops below -margin wherever h.u > 0.

u starts as the unit mean of the final hidden states over a corpus, but that is not enough: on SmolLM2, 5 of
about 25,000 sampled positions have h.u <= 0 for it. So u is the direction that maximizes the smallest
cosine with the sampled states (subgradient ascent from the normalized mean; 0.2 on SmolLM2 and kjv).

Left out: measuring anything (diagnostics.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from .corpus import Corpus, require_corpus
from .errors import InvalidInputError
from .tokenization import documents_up_to, start_token_id
from .forward import PassStats, run_pass
from .rows.layout import embedding_layout, untie

if TYPE_CHECKING:
    from .rows.compute import NewRows

# Scale alpha beyond the minimum the sample needs, so unseen text stays below the margin too. The needed
# alpha has a heavy tail over positions (measured on SmolLM2: 1.5x was not enough for every held-out verse).
SAFETY = 3.0
# Documents spread over the whole train split, not its first pages.
SAMPLE_DOCUMENTS = 400


@torch.no_grad()
def negative_logit_twin(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    margin: float = 20.0,
    *,
    max_tokens: int = 4000,
) -> nn.Module:
    """A copy of ``model`` with the same next-token distribution whose logits are all below -margin. It shares
    every weight with ``model`` but its head (copy_sharing_weights), so it costs one head matrix, not a model.

    alpha = SAFETY * max over sampled positions of (max logit + margin) / (h.u). Raises ValueError if some
    hidden state has h.u <= 0 (the shift would then raise its logits, not lower them).
    """
    corpus = require_corpus(corpus)  # a path or alias such as "kjv" is loaded
    source = corpus.train or corpus.heldout
    spread = source[:: max(1, len(source) // SAMPLE_DOCUMENTS)]
    docs = documents_up_to(spread, tokenizer, max_tokens)
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    # Both with a start token and without one: a first position with no context is often the outlier.
    stats = PassStats.concat([run_pass(model, ids, len(tokenizer), start_token_id(tokenizer)),
                              run_pass(model, ids, len(tokenizer), None)])
    u = maxmin_direction(stats.hidden)
    projection = stats.hidden @ u
    if projection.min() <= 0:
        raise InvalidInputError("no direction has a positive projection on every sampled hidden state, so no shift of "
                         "this kind lowers every logit of this model")
    alpha = SAFETY * ((stats.max_logit + margin) / projection).max().clamp_min(0).item()
    twin = copy_sharing_weights(model)
    layout = embedding_layout(twin)
    if layout.tied:
        untie(twin, layout)
    head = layout.output.weight
    head.sub_((alpha * u).to(head.dtype))
    min_cos = (projection / stats.hidden.norm(dim=1)).min().item()
    twin.config.negative_logit_twin = {"alpha": alpha, "margin": margin, "min_cosine": min_cos}
    return twin


def copy_sharing_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (its own modules and config) that shares every parameter and buffer with it except an
    untied head's weight, which is copied: the twin changes only its head, so a 70B model is not copied whole.
    A tied head is shared here and untied by the caller (untie gives it its own matrix)."""
    layout = embedding_layout(model)
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    if not layout.tied:
        shared.pop(id(layout.output.weight))
    return copy.deepcopy(model, memo=shared)


def shifted_rows(rows: "NewRows", model: nn.Module, twin: nn.Module) -> "NewRows":
    """The twin's image of new rows computed for ``model``: the same input rows, output rows shifted as every
    head row was (e - alpha u), so the twin expanded with them has exactly the expanded model's distribution.
    fit's and distill's objectives are shift-equivariant, so these are what learning on the twin gives (up to
    float rounding, which can tip fit's choice between two strengths whose calibration losses tie), without
    learning again. The twin's head is untied, so the result is too."""
    from .rows.compute import NewRows

    old = embedding_layout(model).output.weight
    shift = (old[0].detach().float() - embedding_layout(twin).output.weight[0].detach().float()).cpu()
    details = {**rows.details, "shared_from": "the original model's rows, output rows shifted as the twin's head"}
    return NewRows(rows.input, rows.head - shift, rows.bias, False, rows.input_strategy, rows.output_strategy, details)


def maxmin_direction(hidden: Tensor, steps: int = 500, step_size: float = 0.05) -> Tensor:
    """A unit vector u [d] with the largest smallest cosine to the rows of ``hidden`` [P, d] found by
    subgradient ascent (move toward the worst-aligned row), starting from the normalized mean."""
    unit = hidden / hidden.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = unit.mean(0)
    u = u / u.norm()
    best, best_score = u, (unit @ u).min()
    for _ in range(steps):
        cos = unit @ u
        u = u + step_size * unit[cos.argmin()]
        u = u / u.norm()
        score = (unit @ u).min()
        if score > best_score:
            best, best_score = u, score
    return best
