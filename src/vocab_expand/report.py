"""The one writer of every result: an expansion's record (expansion.json: `expansion_record`, then
`saved_record` when a folder is saved), a diagnosis (report.md with tables and one verdict per strategy,
diagnosis.json with every figure, PNG figures: KL histograms on a log axis, the log Z histogram, bits per
character), a comparison (comparison.json, report.md, adaptation curves) and the main job's summary.

Left out: computing the figures (diagnostics.py, experiments.py, demo.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .io import atomic_directory, write_json, write_text_atomic
from .pairs import ran_label

# Bins of the KL and log Z histograms (log-spaced for KL).
HISTOGRAM_BINS = 60

if TYPE_CHECKING:
    from .config import ExpandConfig
    from .diagnostics import Diagnosis
    from .experiments import Comparison
    from .planning import TokenPlan
    from .rows.grow import RowFigures


def expansion_record(plan: "TokenPlan", rows: "RowFigures", config: "ExpandConfig", *, method: str, seconds: float,
                     lora: dict[str, Any] | None, peak: dict[str, Any], learned: dict[str, Any] | None = None,
                     source: dict[str, Any] | None = None) -> dict[str, Any]:
    """expansion.json, from figures computed elsewhere: the plan's tokens and skips, the ``rows`` figures
    (rows/grow.py), what the data-driven strategies ``learned`` (their reports and the sample's figures), how it
    was done (``method``: "model" in memory, "checkpoint" on the files) and in how many ``seconds``, the config,
    the PEFT ``lora`` arguments, the ``peak`` memory and the ``source`` (see with_source)."""
    record = {
        "method": method,
        "family": plan.family,
        "words_given": plan.words_given,
        "tokens_added": len(plan.entries),
        "words_skipped": sum(1 for s in plan.skipped if not s.form),
        "skipped": [s._asdict() for s in plan.skipped],
        "new_tokens": [{"id": i, "token": e.token, "text": e.text, "word": e.word, "form": e.form,
                        "pieces": list(e.pieces)} for e, i in zip(plan.entries, plan.new_token_ids)],
        **dataclasses.asdict(rows),
        **({"data_driven": learned} if learned else {}),
        "timings": {"tokenizer_s": plan.seconds, "embeddings_s": seconds},
        "config": config.to_dict(),
        "fine_tuning": {"new_token_ids": list(plan.new_token_ids), "peft_lora": lora},
        "peak_memory": peak,
    }
    return with_source(record, **source) if source else record


def with_source(record: dict[str, Any], *, model: str, corpus: str | None) -> dict[str, Any]:
    """The record with what it was made from, as the user named it: the ``model`` and the ``corpus`` (None
    without text)."""
    return record | {"model": model, "corpus": corpus}


def saved_record(record: dict[str, Any], serving: dict[str, Any], files: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record as a save writes it: the ``files`` written (a checkpoint expansion) and the ``serving`` checks
    of the saved folder (serving.finish_folder). A record saved again keeps its keys' order."""
    return record | ({"files": files} if files is not None else {}) | {"serving": serving}


def write_report(diagnosis: "Diagnosis", path: str | os.PathLike, *, force: bool = False, extra_md: str = "") -> None:
    with atomic_directory(path, force=force) as tmp:
        write_into(diagnosis, tmp, extra_md=extra_md)


def write_into(diagnosis: "Diagnosis", folder: Path, *, prefix: str = "", extra_md: str = "") -> None:
    """Write the report files into an existing folder (names start with ``prefix``)."""
    write_json(folder / f"{prefix}diagnosis.json", diagnosis.figures)
    plot_kl(diagnosis, folder / f"{prefix}kl_histograms.png")
    plot_log_z(diagnosis, folder / f"{prefix}log_z.png")
    plot_bpc(diagnosis, folder / f"{prefix}bits_per_character.png")
    (folder / f"{prefix}report.md").write_text(markdown(diagnosis, prefix) + extra_md, encoding="utf-8")


def table(diagnosis: "Diagnosis") -> str:
    """A short fixed-width table for the terminal; each strategy labelled with what ran (pairs.ran_label)."""
    f = diagnosis.figures
    lines = [f"{f['label']}: k={f['k']} new tokens, n={f['n']}, bound log(1+k/n)={f['hewitt_bound_nats']:.2e} nats, "
             f"bpc before {f['bpc_before']:.4f}",
             f"{'strategy':<22} {'mean KL':>9} {'max KL':>9} {'moved':>7} {'argmax':>7} {'bpc':>8} {'Δbpc %':>8}"]
    for name, row in diagnosis.strategies.items():
        lines.append(f"{ran_label(name, row):<22} {row['kl']['mean']:>9.2e} {row['kl']['max']:>9.2e} "
                     f"{100 * row['moved_probability']['mean']:>6.1f}% {100 * row['new_token_argmax_share']:>6.1f}% "
                     f"{row.get('bpc_after', math.nan):>8.4f} {row.get('bpc_change_percent', math.nan):>+8.2f}")
    return "\n".join(lines)


def markdown(diagnosis: "Diagnosis", prefix: str = "") -> str:
    f = diagnosis.figures
    risk = f["risk"]
    out = [
        f"# Diagnosis: {f['label']}", "",
        f"{f['k']} new tokens over n = {f['n']}; held-out sample: {f['documents']} documents, {f['characters']} "
        f"characters, {f['tokens_before']} tokens before and {f['tokens_after']} after "
        f"({f['tokens_before'] - f['tokens_after']} saved); KL measured on {f['clean_prefixes']} prefixes without new "
        f"tokens. Hewitt bound log(1 + k/n) = {f['hewitt_bound_nats']:.3e} nats.", "",
        "## Verdicts", "", *[f"- {row['verdict']}" for row in diagnosis.strategies.values()], "",
        "## Figures", "",
        "| strategy | input rows | output rows | mean KL | median | p99 | max KL | within bound | moved mean | "
        "moved max | new argmax | bpc | Δbpc | adoption |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in diagnosis.strategies.items():
        kl = row["kl"]
        out.append(f"| {name} | {row['input_strategy']} | {row['output_strategy']} | {kl['mean']:.2e} | {kl['median']:.2e} "
                   f"| {kl['p99']:.2e} | {kl['max']:.2e} | {'yes' if row['within_bound'] else 'no'} "
                   f"| {100 * row['moved_probability']['mean']:.2f}% | {100 * row['moved_probability']['max']:.2f}% "
                   f"| {100 * row['new_token_argmax_share']:.1f}% | {row.get('bpc_after', math.nan):.4f} "
                   f"| {row.get('bpc_change_percent', math.nan):+.2f}% | {100 * row.get('adoption', math.nan):.0f}% |")
    out += [
        "", f"Bits per character before expansion: {f['bpc_before']:.4f}. Adoption: where the held-out text has a "
        "new word, the share of occurrences where the new token outranks the word's old first piece (would the "
        "model write the word with its new token?).", "",
        "## Risk of this model, before choosing a strategy", "",
        f"log Z over held-out prefixes: mean {risk['log_z']['mean']:.2f}, median {risk['log_z']['median']:.2f}, "
        f"min {risk['log_z_min']:.2f}, max {risk['log_z']['max']:.2f}. Zero or random rows (logit about 0) would cost "
        f"KL log(1 + k exp(-log Z)): mean {risk['predicted_kl_zero_rows']['mean']:.3g} nats, max "
        f"{risk['predicted_kl_zero_rows']['max']:.3g}, moving on average "
        f"{100 * risk['predicted_moved_zero_rows']['mean']:.1f}% of the probability to the new tokens.", "",
        f"![KL histograms]({prefix}kl_histograms.png)", "", f"![log Z]({prefix}log_z.png)", "",
        f"![bits per character]({prefix}bits_per_character.png)", "", "## Generations", "",
    ]
    for i, before in enumerate(f["generations_before"]):
        out += [f"**{before['prompt']}**", "", "| model | greedy | sampled (seeded) |", "|---|---|---|",
                f"| original | {_cell(before['greedy'])} | {_cell(before['sampled'])} |"]
        for name, row in diagnosis.strategies.items():
            g = row["generations"][i]
            out.append(f"| {name} | {_cell(g['greedy'])} | {_cell(g['sampled'])} |")
        out.append("")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return repr(text)[1:-1].replace("|", "\\|")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kl(diagnosis: "Diagnosis", path: Path) -> None:
    """One histogram per strategy of per-prefix KL, on a log-scale axis, with the Hewitt bound marked."""
    plt = _pyplot()
    names = list(diagnosis.kl)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    bound = diagnosis.figures["hewitt_bound_nats"]
    values = torch.cat([v for v in diagnosis.kl.values()]).clamp_min(1e-12)
    edges = torch.logspace(math.log10(values.min().item()), math.log10(max(values.max().item(), bound * 2)),
                           HISTOGRAM_BINS)
    for ax, name in zip(axes.flat, names):
        ax.hist(diagnosis.kl[name].clamp_min(1e-12).numpy(), bins=edges.numpy(), color="tab:blue")
        ax.axvline(bound, color="tab:red", linestyle="--", label="log(1+k/n)")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("KL(p_old || p_new), nats")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{diagnosis.figures['label']}: per-prefix KL", fontsize=11)
    _save(plt, fig, path)


def plot_log_z(diagnosis: "Diagnosis", path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.hist(diagnosis.log_z.numpy(), bins=HISTOGRAM_BINS, color="tab:purple")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("log Z (log-partition over the old vocabulary)")
    ax.set_ylabel("prefixes")
    ax.set_title(f"{diagnosis.figures['label']}: a new logit of 0 takes e^0/(e^0+Z) of the mass", fontsize=9)
    _save(plt, fig, path)


def plot_bpc(diagnosis: "Diagnosis", path: Path) -> None:
    plt = _pyplot()
    names = ["original"] + list(diagnosis.strategies)
    values = [diagnosis.figures["bpc_before"]] + [r.get("bpc_after", math.nan) for r in diagnosis.strategies.values()]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    bars = ax.bar(range(len(names)), values, color=["tab:gray"] + ["tab:blue"] * (len(names) - 1))
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("held-out bits per character (log)")
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=7)
    ax.set_title(f"{diagnosis.figures['label']}: bits per character", fontsize=10)
    _save(plt, fig, path)


def plot_curves(comparison: "Comparison", folder: Path) -> None:
    """bits_per_character.png (held-out, one line per strategy, the target dashed) and train_loss.png."""
    target = (comparison.target_bpc, f"target: final {comparison.reference}")
    _plot_lines(comparison.evaluations, "bits_per_character", "held-out bits per character (log)",
                f"{comparison.label}: adaptation by initialization", folder / "bits_per_character.png", target)
    _plot_lines(comparison.losses, "train_loss", "training loss (nats per token, log)",
                f"{comparison.label}: training loss", folder / "train_loss.png")


def _plot_lines(series: dict[str, list[dict]], key: str, ylabel: str, title: str, path: Path,
                target: tuple[float | None, str] | None = None) -> None:
    """One line per name of records[key] against records["step"], on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, records in series.items():
        if records:
            ax.plot([r["step"] for r in records], [r[key] for r in records], marker="o" if len(records) < 30 else None,
                    markersize=3, linewidth=1, label=name)
    if target and target[0] is not None:
        ax.axhline(target[0], color="black", linestyle="--", linewidth=0.8, label=target[1])
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save(plt, fig, path)


def write_comparison(comparison: Comparison, runs: Path) -> None:
    write_json(runs / "comparison.json", comparison.to_dict())
    plot_curves(comparison, runs)
    write_text_atomic(runs / "report.md", comparison_markdown(comparison))


def _rates(train: dict) -> dict:
    from .training import TrainConfig

    return TrainConfig(**train).rates()


def comparison_markdown(comparison: Comparison) -> str:
    train = comparison.config["train"]
    lines = [
        f"# Adaptation: {comparison.label} on {comparison.config['corpus']}", "",
        f"{len(comparison.config['words'])} words; {train['steps']} steps of {train['batch_size']} x {train['seq_len']} "
        f"tokens ({train['train']} fine-tuning, lr {train['learning_rate']}, seed {train['seed']}), identical data "
        f"order for every strategy; held-out evaluation every {train['eval_every']} steps.", "",
        "Peak learning rates: " + ", ".join(f"{part.replace('_', ' ')} {'frozen' if rate is None else rate}"
                                           for part, rate in _rates(train).items()) + ".", "",
        f"Target: {comparison.reference}'s final bits per character"
        + (f" ({comparison.target_bpc:.4f})." if comparison.target_bpc is not None else " (not reached yet)."), "",
        "| strategy | bpc at step 0 | final bpc | best bpc | steps to target | new-token probability (0 -> final) "
        "| adoption (0 -> final) | updates skipped (inf/nan gradient) | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in comparison.summary().items():
        reached = row["steps_to_target"]
        lines.append(f"| {name} | {row['bpc_start']:.4f} | {row['bpc_final']:.4f} | {row['bpc_best']:.4f} | "
                     f"{reached if reached is not None else 'not reached'} | {row['new_token_probability_start']:.3f} -> "
                     f"{row['new_token_probability_final']:.3f} | {100 * row['adoption_start']:.0f}% -> "
                     f"{100 * row['adoption_final']:.0f}% | {len(row['skipped_steps'])} | "
                     f"{comparison.status.get(name, '')} |")
    lines += ["", "![bits per character](bits_per_character.png)", "", "![training loss](train_loss.png)", ""]
    return "\n".join(lines)


def saved_generations(original: "Diagnosis", saved: str, before_words: dict[str, str]) -> list[str]:
    """The demo's section on the saved model's greedy generations: held-out text that stops just before a mined
    word (``before_words``: prompt -> that word), continued by the original model and by the rows of the pair
    ``saved`` (the ones the demo saved), the new tokens written named."""
    row = original.strategies[saved]
    lines = ["## Greedy generations of the saved model", "",
             f"Held-out text that stops just before a mined word, continued greedily by the original model and by "
             f"the saved rows ({ran_label(saved, row)}); the new tokens the saved model wrote are named.", ""]
    for before, after in zip(original.figures["generations_before"], row["generations"]):
        if before["prompt"] not in before_words:
            continue
        written = ", ".join(repr(t) for t in after.get("greedy_new_tokens", [])) or "none"
        lines += [f"**…{before['prompt']}** (the held-out text goes on with {before_words[before['prompt']]!r})", "",
                  f"- original: {before['greedy']!r}", f"- saved: {after['greedy']!r} (new tokens: {written})", ""]
    return lines


def demo_summary(model_name: str, corpus_name: str, found: list, saving: dict, report: dict, original: "Diagnosis",
                 twin: "Diagnosis", saved: str, before_words: dict[str, str]) -> str:
    """report.md of the main job: both diagnoses side by side, verdicts, figures and the twin's generations."""
    lines = [
        f"# vocab-expand: {model_name} on {corpus_name}", "",
        f"Mined {len(found)} words; they save {saving['tokens_saved']} of {saving['heldout_tokens']} held-out tokens "
        f"({saving['percent_saved']:.2f}%). Saved model: `model/` ({report['input_strategy']} input rows, "
        f"{report['output_strategy']} output rows, tied: {report['tied']}).", "",
        "Words: " + ", ".join(f"{c.word} ({c.pieces} pieces)" for c in found), "",
        "## The model and its negative-logit twin", "",
        "The twin has exactly the same next-token distribution, but every logit is shifted below -20, as in "
        "GPT-2 small or Gemma-2b. Zero and random rows have logits near 0, so on the twin they take nearly all "
        "the probability; mean rows stay within log(1 + k/n) on both.", "",
        "Adoption: where a new token is the right next token, the share of positions at which the model prefers it "
        "to the word's first old piece (will the model write the new words?).", "",
        "| strategy (what ran) | model: mean KL | model: moved | model: Δbpc | model: adoption | twin: mean KL | "
        "twin: moved | twin: Δbpc | twin: new tokens in greedy text |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in original.strategies.items():
        t = twin.strategies[name]
        share = sum(g.get("greedy_new_token_share", 0.0) for g in t["generations"]) / max(1, len(t["generations"]))
        lines.append(f"| {ran_label(name, row)} | {row['kl']['mean']:.2e} | {100 * row['moved_probability']['mean']:.2f}% "
                     f"| {row['bpc_change_percent']:+.2f}% | {100 * row.get('adoption', math.nan):.0f}% "
                     f"| {t['kl']['mean']:.2e} | {100 * t['moved_probability']['mean']:.2f}% "
                     f"| {t['bpc_change_percent']:+.2f}% | {100 * share:.0f}% |")
    lines += ["", "## Verdicts", "", "Model:", *[f"- {r['verdict']}" for r in original.strategies.values()], "",
              "Twin:", *[f"- {r['verdict']}" for r in twin.strategies.values()], "",
              "![twin KL](twin/kl_histograms.png)", "", "![model KL](original/kl_histograms.png)", "",
              "![twin bits per character](twin/bits_per_character.png)", "", *saved_generations(original, saved, before_words),
              "## Greedy generations on the twin", ""]
    first = twin.figures["generations_before"][-1]  # the general prompt (the others stop before a mined word)
    lines += [f"**{first['prompt']}**", "", f"- original: {first['greedy']!r}"]
    lines += [f"- {ran_label(name, row)}: {row['generations'][-1]['greedy']!r}" for name, row in twin.strategies.items()]
    lines += ["", "Full reports: [original/report.md](original/report.md), [twin/report.md](twin/report.md)."]
    return "\n".join(lines) + "\n"
