"""Rows learned from domain text: run `distill` (input rows), then `fit` (output rows) on the states the new
input rows produce, with the heuristic rows as starting points and as fallbacks for rarely seen words.

Steps: sample the training text (sampling.py); if distilling, build occurrence windows and train the new input
rows (distill.py); if fitting, cache one pass of hidden states over the sample, fed with the final input rows,
and solve for the output rows (fitting.py). Every step is recorded in NewRows.details for expansion.json.

Left out: the maths of each step (their modules); writing rows into the model (expansion.py, resize.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .config import ExpandConfig
from .corpus import Corpus
from .distill import distill_rows, select_windows, windows_in
from .expansion import NewRows, TokenPlan
from .fitting import SOLVE_MAX_POSITIONS, FitData, fit_rows, thinned
from .forward import run_pass, softcap
from .sampling import DomainSample, sample_domain
from .strategies import get_strategy
from .tokenization import start_token_id


def refine_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, corpus: Corpus | Sequence[str],
                rows: NewRows, cache: dict, progress: bool) -> None:
    """Replace ``rows``' heuristic starting rows by distilled input rows and/or fitted output rows, in place."""
    documents = corpus.train if isinstance(corpus, Corpus) else list(corpus)
    key = ("sample", config.seed, config.fit_max_positions, config.min_sampled_occurrences, config.calibration_fraction,
           config.distill_window)
    if key not in cache:
        cache[key] = sample_domain(plan.tokenizer, documents, plan.tokens_before, len(plan.entries),
                                   max_positions=config.fit_max_positions, seed=config.seed,
                                   min_sampled_occurrences=config.min_sampled_occurrences,
                                   calibration_fraction=config.calibration_fraction, tail=config.distill_window,
                                   progress=progress)
    sample: DomainSample = cache[key]
    words = [e.word for e in plan.entries]
    rows.details["sample"] = sample_facts(sample, words)
    if get_strategy(rows.input_strategy).needs_corpus:
        distill_key = ("distill", key, config.distill_contexts, config.distill_max_windows,
                       config.distill_context_tokens, config.distill_window, config.distill_epochs,
                       config.min_occurrences)
        if distill_key not in cache:
            cache[distill_key] = distilled(model, plan, sample, rows.input, config, words, progress)
        rows.input, rows.details["distill"] = cache[distill_key]
    if get_strategy(rows.output_strategy).needs_corpus:
        rows.output, rows.bias, rows.details["fit"] = fitted(model, plan, sample, rows, config, words, progress)


def sample_facts(sample: DomainSample, words: list[str]) -> dict[str, Any]:
    fitting = sample.occurrences(calibration=False)
    return {
        "chunks": len(sample.ids),
        "budget": sample.budget,
        "positions": sample.positions(),
        "calibration_chunks": int(sample.calibration.sum()),
        "training_tokens_scanned": sample.scanned_tokens,
        "occurrences_in_training_text": dict(zip(words, sample.counts.tolist())),
        "occurrences_in_fitting_sample": dict(zip(words, fitting.tolist())),
    }


def distilled(model, plan, sample: DomainSample, start: Tensor, config: ExpandConfig, words, progress):
    """(input rows [k, d], report) from Token Distillation on the sample's occurrence windows."""
    n_old, start_id = plan.tokens_before, start_token_id(plan.tokenizer)
    found = [w for chunk, cal in zip(sample.ids, sample.calibration.tolist())
             for w in windows_in(chunk, plan.pieces, n_old, start_id, context=config.distill_context_tokens,
                                 after=config.distill_window, calibration=cal)]
    per_word = contexts_per_word(len(words), config)
    windows = select_windows(found, per_word)
    seen = torch.bincount(torch.tensor([w.word for w in windows if not w.calibration], dtype=torch.long),
                          minlength=len(words))
    free = seen >= max(1, config.min_occurrences)
    if not free.any():
        return start, {"fallback_words": words, "note": "no word occurs often enough in the sample to distill"}
    result = distill_rows(model, windows, start, n_old, free=free, epochs=config.distill_epochs, seed=config.seed,
                          progress=progress)
    result.report["fallback_words"] = [w for w, f in zip(words, free.tolist()) if not f]
    result.report["contexts_per_word"] = per_word
    return result.rows, result.report


def contexts_per_word(k: int, config: ExpandConfig) -> int:
    """distill_contexts, lowered so that k words stay within distill_max_windows, but never below
    min_occurrences (fewer would make every word fall back)."""
    if config.distill_max_windows is None:
        return config.distill_contexts
    return min(config.distill_contexts, max(config.min_occurrences, 1, config.distill_max_windows // max(1, k)))


def fitted(model, plan, sample: DomainSample, rows: NewRows, config: ExpandConfig, words, progress):
    """(output rows [k, d], bias [k] or None, report): the convex fit on one cached pass over the sample."""
    n_old = plan.tokens_before
    states = run_pass(model, sample.scored(), n_old, start_token_id(plan.tokenizer), input_rows=rows.input,
                      progress=progress, desc="caching hidden states")
    flat, offsets = sample.flat_weights()
    weight = flat[offsets[states.doc] + states.index]
    kept = weight > 0
    data = FitData(hidden=states.hidden, log_z=states.log_z,
                   target=torch.where(states.target >= n_old, states.target - n_old, -1),
                   target_logit=torch.nan_to_num(states.target_logit, nan=0.0), weight=weight).select(kept)
    is_cal = sample.calibration[states.doc[kept]]
    positions = int(kept.sum())
    data, is_cal = thinned(data, is_cal, SOLVE_MAX_POSITIONS, config.seed)
    start = rows.output
    if rows.bias is not None:
        data, start = data.with_bias_column(), torch.cat([rows.output, rows.bias.unsqueeze(1)], 1)
    free = sample.occurrences(calibration=False) >= max(1, config.min_occurrences)
    result = fit_rows(data.select(~is_cal), data.select(is_cal), start, start.clone(), free=free,
                      reg=config.fit_reg, cap=softcap(model), progress=progress)
    result.report.update({"positions": positions, "solved_positions": int(data.hidden.shape[0]),
                          "calibration_positions": int(is_cal.sum()),
                          "fallback_words": [w for w, f in zip(words, free.tolist()) if not f]})
    d = rows.output.shape[1]
    bias = result.rows[:, d] if rows.bias is not None else None
    return result.rows[:, :d].contiguous(), bias, result.report
