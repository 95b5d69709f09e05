"""One strategy's run folder: config.json, metrics.jsonl, an atomic checkpoint/ (Accelerate's save_state plus
the scheduler), state.json and final/. metrics.jsonl is cut back to the checkpoint on resume.

Left out: what is trained (loop.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..io import write_json

SCHEDULER_FILE = "vocab_expand_scheduler.pt"


class RunFolder:
    """One strategy's folder: config.json, metrics.jsonl, checkpoint/ (atomic), state.json, final/."""

    def __init__(self, path: Path):
        self.path = path
        self.metrics = path / "metrics.jsonl"
        self.checkpoint = path / "checkpoint"
        self.state = path / "state.json"

    def step(self) -> int:
        """The step of the last checkpoint (0 when none)."""
        return json.loads(self.state.read_text())["step"] if self.state.is_file() else 0

    def finished(self) -> bool:
        return self.state.is_file() and json.loads(self.state.read_text()).get("finished", False)

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def cut_to(self, step: int) -> None:
        """Drop records after ``step``: they were made after the checkpoint and will be made again."""
        kept = [r for r in self.records() if r["step"] <= step]
        _write_lines(self.metrics, kept)

    def append(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def save(self, accelerator, scheduler, step: int, finished: bool) -> None:
        """Checkpoint atomically: save into checkpoint.tmp, then swap it in and record the step."""
        tmp = self.path / "checkpoint.tmp"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
            old = self.path / "checkpoint.old"
            if self.checkpoint.exists():
                os.replace(self.checkpoint, old)
            os.replace(tmp, self.checkpoint)
            write_json(self.state, {"step": step, "finished": finished})
            if old.exists():
                shutil.rmtree(old)
        accelerator.wait_for_everyone()


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)
