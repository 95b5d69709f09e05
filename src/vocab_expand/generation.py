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
    return out


def _left_padded(tokenizer, prompts: list[str], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask [B, T], padded on the left (so every prompt ends where generation starts);
    the tokenizer's own padding settings are left as they were."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
