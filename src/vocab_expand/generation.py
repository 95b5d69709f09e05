"""Greedy and seeded sampled generations before and after expansion, with the new tokens generated and their
share (the collapse of zero or random rows shows here first); prompts that stop just before a new word show
whether the model writes it.

Left out: choosing the model (diagnostics.py); writing them (report.py).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

PROMPTS = ("And it came to pass, when the king", "Then said Jehoshaphat", "My favourite food is")


def word_prompts(documents: Sequence[str], words: Sequence[str], count: int = 3,
                 context_chars: int = 80) -> dict[str, str]:
    """Prompts that stop just before a new word, so a model that adopted the word writes its new token next: for
    each of the first ``count`` words found in ``documents`` (in the order given), the text before its first
    occurrence as a whole word after at least two others, cut to its last ``context_chars`` characters at a
    space; prompt -> the word that follows it. E.g. "And Jehoshaphat the king" and ["Jehoshaphat"] give nothing
    (one word before it); "Then came Jehoshaphat" gives {"Then came": "Jehoshaphat"}."""
    prompts: dict[str, str] = {}
    for word in words:
        pattern = re.compile(rf"(?<=\S) {re.escape(word)}(?![\w])")
        for document in documents:
            found = pattern.search(document)
            before = document[: found.start()] if found else ""
            if len(before.split()) >= 2:
                cut = before.find(" ", len(before) - context_chars) if len(before) > context_chars else -1
                prompts.setdefault(before[cut + 1:] if cut >= 0 else before, word)
                break
        if len(prompts) == count:
            break
    return prompts


@torch.inference_mode()
def generations(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                new_ids: set[int] | None = None) -> list[dict[str, Any]]:
    """Greedy and seeded sampled continuations of each prompt, with the share of new tokens generated. All
    prompts run as one left-padded batch per mode, on the device of the model's input embedding."""
    prompts = list(prompts)
    if not prompts:
        return []
    stop = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop if stop is not None else 0
    batch = _left_padded(tokenizer, prompts, pad, model.get_input_embeddings().weight.device)
    out: list[dict[str, Any]] = [{"prompt": p} for p in prompts]
    for mode in ("greedy", "sampled"):
        torch.manual_seed(seed)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=mode == "sampled",
                             pad_token_id=pad)
        for row, generated in zip(out, ids[:, batch["input_ids"].shape[1]:].tolist()):
            continuation = generated[: generated.index(stop) + 1] if stop in generated else generated
            row[mode] = tokenizer.decode(continuation, skip_special_tokens=True)
            if new_ids is not None:
                row[f"{mode}_new_token_share"] = sum(t in new_ids for t in continuation) / max(1, len(continuation))
                row[f"{mode}_new_tokens"] = [tokenizer.decode([t]) for t in continuation if t in new_ids]
    return out


def _left_padded(tokenizer, prompts: list[str], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask [B, T], padded on the left (so every prompt ends where generation starts);
    the tokenizer's own padding settings are left as they were."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
