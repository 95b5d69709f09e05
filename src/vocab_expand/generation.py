"""Greedy and seeded sampled generations before and after expansion, with the share of new tokens generated
(the collapse of zero or random rows shows here first).

Left out: choosing the model (diagnostics.py); writing them (report.py).
"""

from __future__ import annotations

from typing import Any

import torch

PROMPTS = ("And it came to pass, when the king", "Then said Jehoshaphat", "My favourite food is")


@torch.inference_mode()
def generations(model, tokenizer, prompts: list[str], max_new_tokens: int, seed: int,
                new_ids: set[int] | None = None) -> list[dict[str, Any]]:
    """Greedy and seeded sampled continuations of each prompt, with the share of new tokens generated."""
    out = []
    for prompt in prompts:
        batch = tokenizer(prompt, return_tensors="pt")
        row: dict[str, Any] = {"prompt": prompt}
        for mode in ("greedy", "sampled"):
            torch.manual_seed(seed)
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=mode == "sampled",
                                 pad_token_id=tokenizer.eos_token_id)
            continuation = ids[0, batch["input_ids"].shape[1]:].tolist()
            row[mode] = tokenizer.decode(continuation, skip_special_tokens=True)
            if new_ids is not None:
                row[f"{mode}_new_token_share"] = sum(t in new_ids for t in continuation) / max(1, len(continuation))
        out.append(row)
    return out
