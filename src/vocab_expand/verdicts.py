"""One sentence per diagnosed strategy that a user can act on: BROKEN, FITTED, RISKY, OK HERE (no
guarantee) or SAFE, from the figures of diagnose.

Left out: computing the figures (diagnostics.py).
"""

from __future__ import annotations

from typing import Any

from .strategies import get_strategy


def verdict(name: str, row: dict[str, Any]) -> str:
    """One sentence a user can act on."""
    moved, argmax = row["moved_probability"]["mean"], row["new_token_argmax_share"]
    bpc = f"; bits per character {row['bpc_change_percent']:+.2f}%" if "bpc_change_percent" in row else ""
    if moved > 0.5 or argmax > 0.5:
        return (f"{name}: BROKEN - the new tokens take {100 * moved:.1f}% of the probability on average and are the "
                f"top prediction on {100 * argmax:.1f}% of prefixes{bpc}.")
    kl = row["kl"]
    if get_strategy(row["output_strategy"]).needs_corpus:
        return (f"{name}: FITTED - learned from the domain text, the new tokens take {100 * moved:.2f}% of the "
                f"probability on prefixes without new words (mean KL {kl['mean']:.2e}, max {kl['max']:.2e} nats; "
                f"mean rows would stay below {row['hewitt_bound_nats']:.2e}){bpc}.")
    if kl["mean"] > 0.1 or kl["max"] > 1.0:
        return f"{name}: RISKY - mean KL {kl['mean']:.3f}, max {kl['max']:.2f} nats on old-vocabulary prefixes{bpc}."
    if not row["within_bound"]:
        return (f"{name}: OK HERE, NO GUARANTEE - mean KL {kl['mean']:.2e}, max {kl['max']:.2e} nats, above the "
                f"Hewitt bound on {100 * (1 - row['share_within_bound']):.1f}% of prefixes, so other text or "
                f"models may fare worse{bpc}.")
    return f"{name}: SAFE - max KL {kl['max']:.2e} nats, within the Hewitt bound on every prefix{bpc}."
