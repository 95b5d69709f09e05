"""The fine-tuning recipe (issue #17): which way of training after expansion gets furthest, per initialization.

Three arms, each a `compare` with the same words, data order and evaluations, run one after the other:
  full     full fine-tuning at --lr
  lora     LoRA adapters (r --lora-r) plus the new rows as trainable tokens, all at --lora-lr
  lora10   the same with the new rows at --new-rows-factor x --lora-lr (`--lr-new-rows`)
each with --strategies (hf_default and the project's default: `joint` on a tied model, distill/fit otherwise).
Writes one JSON (every arm's comparison, and per arm and strategy: bits per character at each evaluation,
steps to the same arm's hf_default final value, adoption at the first and last evaluation), prints the table,
and draws every arm's held-out curves in one PNG (--figure).

    python benchmarks/bench_recipe.py --model smollm2-135m --words runs/words100.txt --steps 40 --eval-every 10 \\
        --lr 1e-4 --lora-lr 2e-4 --runs runs/recipe-smollm2 --figure docs/figures/recipe_smollm2_bpc.png \\
        --out benchmarks/results/recipe_smollm2.json

--from-results full=A.json,lora=B.json,... skips training and reads comparisons written before (compare's
comparison.json), e.g. to redraw the figure. Left out: choosing the rates (BENCHMARKS.md says how they were).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ARMS = ("full", "lora", "lora10")


def arm_options(arm: str, args: argparse.Namespace) -> dict:
    """compare's training options for one arm, e.g. lora10: {"train": "lora", "learning_rate": 2e-4,
    "lr_new_rows": 2e-3, ...}."""
    common = {"steps": args.steps, "eval_every": args.eval_every, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "warmup_steps": args.warmup_steps, "eval_tokens": args.eval_tokens}
    if arm == "full":
        return {**common, "train": "full", "learning_rate": args.lr}
    lora = {**common, "train": "lora", "learning_rate": args.lora_lr, "lora_r": args.lora_r}
    return {**lora, "lr_new_rows": args.new_rows_factor * args.lora_lr} if arm == "lora10" else lora


def run_arms(args: argparse.Namespace) -> dict[str, dict]:
    from vocab_expand import compare, load_corpus
    from vocab_expand.cli import read_words

    words = read_words(args)  # the CLI's reading of a words file, checks included
    corpus = load_corpus(args.corpus)
    return {arm: compare(args.model, corpus, words, args.strategies, Path(args.runs) / arm, force=args.force,
                         progress=not args.quiet, **arm_options(arm, args)).to_dict()
            for arm in args.arms.split(",")}


def read_arms(spec: str) -> dict[str, dict]:
    """"full=a.json,lora=b.json" -> {"full": comparison dict, ...}."""
    arms = {}
    for item in spec.split(","):
        arm, _, path = item.partition("=")
        arms[arm] = json.loads(Path(path).read_text(encoding="utf-8"))
    return arms


def table(arms: dict[str, dict]) -> list[dict]:
    """One row per arm and strategy. Steps to target: the first evaluation at or below the arm's own
    reference (hf_default) final value; None if never."""
    rows = []
    for arm, comparison in arms.items():
        evaluations = comparison["evaluations"]
        reference = evaluations.get(comparison["reference"]) or []
        target = reference[-1]["bits_per_character"] if reference else None
        for strategy, records in evaluations.items():
            reached = [r["step"] for r in records if target is not None and r["bits_per_character"] <= target]
            rows.append({"arm": arm, "strategy": strategy, "rate": comparison["config"]["train"].get("learning_rate"),
                         "new_rows_rate": comparison["config"]["train"].get("lr_new_rows"),
                         "steps": [r["step"] for r in records],
                         "bits_per_character": [r["bits_per_character"] for r in records],
                         "steps_to_reference_final": reached[0] if reached else None,
                         "adoption": [records[0].get("adoption"), records[-1].get("adoption")]})
    return rows


def draw(rows: list[dict], label: str, path: Path) -> None:
    """Held-out bits per character against the step: colour per arm, line style per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(dict.fromkeys(r["arm"] for r in rows), plt.cm.tab10.colors))  # arms in their order
    styles = {s: ("--", "-", ":", "-.")[i % 4] for i, s in enumerate(dict.fromkeys(r["strategy"] for r in rows))}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in rows:
        ax.plot(r["steps"], r["bits_per_character"], linestyle=styles[r["strategy"]], color=colours[r["arm"]],
                marker="o", markersize=3, linewidth=1.2, label=f"{r['arm']}: {r['strategy']}")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("held-out bits per character")
    ax.set_title(f"{label}: fine-tuning arms by initialization", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="kjv")
    parser.add_argument("--words", help="file with one word a line (e.g. from `vocab-expand mine`)")
    parser.add_argument("--strategies", default="hf_default,joint")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=48)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--eval-tokens", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-4, help="full fine-tuning's rate")
    parser.add_argument("--lora-lr", type=float, default=2e-4, help="the LoRA arms' rate")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--new-rows-factor", type=float, default=10.0, help="lora10's new-rows rate over --lora-lr")
    parser.add_argument("--runs", default="runs/recipe", help="compare's folders, one per arm (a rerun resumes)")
    parser.add_argument("--force", action="store_true", help="replace runs made with another request")
    parser.add_argument("--from-results", help="ARM=comparison.json,... instead of training")
    parser.add_argument("--figure", help="PNG of every arm's held-out curves")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not args.from_results and not args.words:
        parser.error("give --words (one word a line), or --from-results")
    arms = read_arms(args.from_results) if args.from_results else run_arms(args)
    rows = table(arms)
    label = next(iter(arms.values()))["label"]
    Path(args.out).write_text(json.dumps({"label": label, "table": rows, "arms": arms}, indent=1) + "\n",
                              encoding="utf-8")
    if args.figure:
        draw(rows, label, Path(args.figure))
    print(f"| arm | strategy | rate (new rows) | {' | '.join(f'step {s}' for s in rows[0]['steps'])} | "
          f"steps to the arm's hf_default final | adoption (first -> last) |")
    for r in rows:
        bpc = " | ".join(f"{b:.4f}" for b in r["bits_per_character"])
        adoption = " -> ".join("n/a" if a is None else f"{100 * a:.0f}%" for a in r["adoption"])
        print(f"| {r['arm']} | {r['strategy']} | {r['rate']:g} ({r['new_rows_rate'] or r['rate']:g}) | {bpc} | "
              f"{r['steps_to_reference_final']} | {adoption} |")


if __name__ == "__main__":
    main()
