"""Occurrence windows: every place a new word occurs in the sampled text, with its left context and the tokens
after it, read once as the new token (student) and once as the word's old pieces (teacher).

A data-driven strategy that declares the need "windows" gets them from its LearnContext (distill uses them
to match hidden states; Token Distillation, Dobler et al. 2026).

Left out: what is done with them (strategies/distill/).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Window:
    """One occurrence. prefix: [start, left context] (no new token, read alike by student and teacher);
    student: [j, next tokens]; teacher: [pieces of j, next tokens]; matched positions within each tail."""

    word: int
    prefix: list[int]
    student: list[int]
    teacher: list[int]
    student_positions: list[int]
    teacher_positions: list[int]
    calibration: bool


def windows_in(chunk: list[int], pieces: list[list[int]], tokens_before: int, start_id: int, *, context: int,
               after: int, calibration: bool) -> list[Window]:
    """Every occurrence of a new token in ``chunk`` as a Window with at most ``context`` tokens before it
    and ``after`` after it, stopping at other new tokens."""
    found = []
    for p, token in enumerate(chunk):
        if token < tokens_before:
            continue
        left = chunk[max(0, p - context) : p]
        while any(t >= tokens_before for t in left):
            left = left[next(i for i, t in enumerate(left) if t >= tokens_before) + 1 :]
        right = []
        for t in chunk[p + 1 : p + 1 + after]:
            if t >= tokens_before:
                break
            right.append(t)
        m = len(pieces[token - tokens_before])
        found.append(Window(
            word=token - tokens_before,
            prefix=[start_id, *left],
            student=[token, *right],
            teacher=[*pieces[token - tokens_before], *right],
            student_positions=list(range(1 + len(right))),
            teacher_positions=list(range(m - 1, m + len(right))),
            calibration=calibration,
        ))
    return found


def select_windows(windows: list[Window], per_word: int) -> list[Window]:
    """At most ``per_word`` fitting windows per word (a third as many calibration ones), in the order found."""
    kept, seen = [], {}
    for w in windows:
        key = (w.word, w.calibration)
        if seen.get(key, 0) < (max(1, per_word // 3) if w.calibration else per_word):
            seen[key] = seen.get(key, 0) + 1
            kept.append(w)
    return kept
