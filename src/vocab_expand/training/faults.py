"""Fault injection for the resume tests: the kill must land at a known step (between checkpoints, too), which
no signal sent from outside can promise. Does nothing unless the variable is set.

Left out: everything else.
"""

from __future__ import annotations

import os


def crash_after_step(step: int) -> None:
    """VOCAB_EXPAND_CRASH_AFTER_STEP=N kills the process right after step N, as kill -9 would: the resume
    test uses it, so that the kill lands at a known step (between checkpoints, too)."""
    if os.environ.get("VOCAB_EXPAND_CRASH_AFTER_STEP") == str(step):
        os._exit(137)
