"""Fitted initialization: held-out bits per character right after expansion, for every strategy, and what
the default costs, tied and untied.

For each model and word count, in one run: mine the top words of the kjv train split; diagnose every
registered strategy (and the pairs that matter) on the held-out sample, fit, distill and joint learning from
the train split only, and the --untied pairs again with tie_policy="untie" (rows named "NAME (untied)"); then
time a plain `expand(..., corpus=kjv)` with the defaults (on a tied model: joint, the model stays tied) and with
tie_policy="untie" (distill/fit and a head copy), with their steps, parameters added and peak memory added.

    python benchmarks/bench_fit.py --models smollm2-135m --words 100 --out benchmarks/results/fit_smollm2_100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

from vocab_expand import diagnose, expand, load_corpus, load_model, mine
from vocab_expand.config import ALIASES, ExpandConfig

STRATEGIES = ["zeros", "random", "hf_default", "mean", "mean_cov", "subword", "subword/mean", "subword/fit",
              "distill/mean", "distill/fit", "joint"]
# Diagnosed again with tie_policy="untie" (on an untied model they are the same rows as above).
UNTIED = ["distill/fit"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model_name: str, k: int, corpus, max_tokens: int, strategies: list[str], timing: bool = True,
        options: dict | None = None, untied: list[str] | None = None, cost_only: bool = False,
        split_tied_gap: bool = False, heldout_seeds: list[int] | None = None) -> dict:
    options = options or {}
    model, tokenizer = load_model(model_name)
    words = [c.word for c in mine(tokenizer, corpus, k, progress=False)]
    if cost_only:  # the two timed expands alone, side by side on a quiet machine
        return {"model": model_name, "words": len(words),
                "cost": {"untie": timed_expand(model, tokenizer, words, corpus, {**options, "tie_policy": "untie"}),
                         "default": timed_expand(model, tokenizer, words, corpus, options)}}
    cost = {"default": timed_expand(model, tokenizer, words, corpus, options),
            "untie": timed_expand(model, tokenizer, words, corpus, {**options, "tie_policy": "untie"})} if timing else None
    learned: dict = {}  # the tied and untied diagnoses share the sample, cached states and distilled rows
    found = diagnose(model, tokenizer, words, corpus, strategies, max_tokens=max_tokens, generate=False,
                     learned_cache=learned, **options)
    rows = {name: _row(row) for name, row in found.strategies.items()}
    apart = None
    if untied:
        apart = diagnose(model, tokenizer, words, corpus, untied, max_tokens=max_tokens, generate=False,
                         learned_cache=learned, **{**options, "tie_policy": "untie"})
        rows.update({f"{name} (untied)": _row(row) for name, row in apart.strategies.items()})
        if split_tied_gap:
            rows.update(tied_gap_split(model, tokenizer, words, corpus, found.rows, apart.rows,
                                       dict(max_tokens=max_tokens, generate=False, learned_cache=learned,
                                            **{**options, "tie_policy": "untie"})))
    resampled = [other_heldout_sample(model, tokenizer, words, corpus, found.rows, apart.rows if apart else {},
                                      dict(max_tokens=max_tokens, generate=False, **options), seed)
                 for seed in heldout_seeds or []]
    return {"model": model_name, "words": len(words), "k": found.figures["k"],
            "bpc_before": found.figures["bpc_before"], "hewitt_bound_nats": found.figures["hewitt_bound_nats"],
            "heldout_tokens": found.figures["tokens_before"], "strategies": rows, "cost": cost, "options": _plain(options),
            **({"other_heldout_samples": resampled} if resampled else {})}


def other_heldout_sample(model, tokenizer, words: list[str], corpus, tied_rows: dict, untied_rows: dict,
                         options: dict, seed: int) -> dict:
    """The same rows (learned once, on the train split) scored on another held-out sample, drawn with ``seed``:
    how much a figure, and the gap between two rows, owes to which held-out documents were drawn."""
    changes, tokens = {}, None
    for suffix, given, policy in (("", tied_rows, {}), (" (untied)", untied_rows, {"tie_policy": "untie"})):
        if not given:
            continue
        found = diagnose(model, tokenizer, words, corpus, list(given), rows=given, seed=seed,
                         **{**options, **policy})
        tokens = found.figures["tokens_before"]
        changes.update({name + suffix: row["bpc_change_percent"] for name, row in found.strategies.items()})
    return {"seed": seed, "heldout_tokens": tokens, "bpc_change_percent": changes}


def tied_gap_split(model, tokenizer, words: list[str], corpus, tied_rows: dict, untied_rows: dict,
                   options: dict) -> dict:
    """joint (one row E) against the untied distill/fit (input A, output F), split into reading and predicting:
    the untied model diagnosed again with (A, E) and with (E, F). Rows "read A, predict E" and "read E,
    predict F"; with the two pairs above, the four corners of the gap."""
    import dataclasses

    shared, base = tied_rows["joint"].input, untied_rows["distill/fit"]
    corners = {"read A, predict E": dataclasses.replace(base, output=shared),
               "read E, predict F": dataclasses.replace(base, input=shared)}
    return {name: _row(diagnose(model, tokenizer, words, corpus, ["distill/fit"], rows={"distill/fit": rows},
                                **options).strategies["distill/fit"])
            for name, rows in corners.items()}


def _row(row: dict) -> dict:
    return {"bpc_after": row["bpc_after"], "bpc_change_percent": row["bpc_change_percent"],
            "kl_mean": row["kl"]["mean"], "kl_max": row["kl"]["max"], "moved_mean": row["moved_probability"]["mean"],
            "within_bound": row["within_bound"], "tied": row["tied"], "input_strategy": row["input_strategy"],
            "output_strategy": row["output_strategy"], **_fit_facts(row)}


def _fit_facts(row: dict) -> dict:
    details = row.get("data_driven", {})
    joint = details.get("joint", {})
    return {"fit_seconds": details.get("fit", {}).get("seconds"),
            "distill_seconds": details.get("distill", joint.get("distill", {})).get("seconds"),
            "joint_seconds": joint.get("seconds"), "joint_input_weight": joint.get("input_weight"),
            "joint_input_weight_path": joint.get("input_weight_path"), "joint_reg": joint.get("reg"),
            "joint_input_step": joint.get("input_step"), "joint_input_step_path": joint.get("input_step_path"),
            "fallback_words": len(details.get("fit", details.get("distill", joint)).get("fallback_words", [])),
            "learn_seconds": _learn_seconds(details)}


def _learn_seconds(details: dict) -> float | None:
    """Seconds the rows took to learn once the sample is drawn: distillation, the states pass and the solves
    (joint's own figure includes all three; distill/fit's is their sum)."""
    if "joint" in details:
        return details["joint"]["seconds"]
    parts = [details.get(name, {}).get("seconds") for name in ("distill", "fit")]
    if not details or None in parts:
        return None
    return sum(parts) + (details["sample"].get("states_seconds") or 0.0)


def timed_expand(model, tokenizer, words: list[str], corpus, options: dict) -> dict:
    """Wall time, steps, parameters and peak memory of a plain expand(..., corpus=...) with ``options``."""
    rss_before = peak_rss_mb()
    began, cpu_began = time.perf_counter(), time.process_time()
    result = expand(model, tokenizer, words, corpus=corpus, progress=True, **options)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    report = result.report
    details = report["data_driven"]
    joint = details.get("joint")
    distill = joint["distill"] if joint else details["distill"]
    solve = joint or details["fit"]
    return {
        "strategies": f"{report['input_strategy']}/{report['output_strategy']}",
        "tied": report["tied"],
        "parameters_before": report["parameters_before"],
        "parameters_added": report["parameters_added"],
        "expand_seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "distill_seconds": distill.get("seconds"),
        "fit_solve_seconds": None if joint else solve["seconds"],
        # joint: the states pass, the reg and input-weight paths and the final solve (distill's time excluded)
        "joint_after_distill_seconds": solve["seconds"] - (distill.get("seconds") or 0) if joint else None,
        "peak_rss_added_mb": peak_rss_mb() - rss_before,
        "budget": details["sample"]["budget"],
        "positions": details["sample"]["positions"],
        "solved_positions": solve["solved_positions"],
        "distill_windows": distill.get("windows"),
        "fallback_words": {"distill": distill["fallback_words"], "fit": solve["fallback_words"]},
        "reg": solve["reg"],
        "input_weight": joint["input_weight"] if joint else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m")
    parser.add_argument("--words", default="100")
    parser.add_argument("--max-tokens", type=int, default=8000)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--untied", default=",".join(UNTIED),
                        help="pairs diagnosed again with tie_policy='untie' ('' for none)")
    parser.add_argument("--no-timing", action="store_true", help="skip the timed expands (rows are computed in diagnose)")
    parser.add_argument("--cost-only", action="store_true",
                        help="only the timed expands (untie, then the default), no diagnosis")
    parser.add_argument("--split-tied-gap", action="store_true",
                        help="also diagnose the untied model reading joint's row with fit's head, and distill's row "
                             "with joint's head (needs joint and --untied distill/fit on a tied model)")
    parser.add_argument("--heldout-seeds", default="",
                        help="also score the same rows on held-out samples drawn with these seeds (comma-separated), "
                             "to see how much the figures depend on the sample")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an ExpandConfig option for every expansion, e.g. distill_max_windows=4096, or a "
                             "strategy's, e.g. joint.input_step=null (repeatable)")
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.split_tied_gap and not ("joint" in args.strategies.split(",") and "distill/fit" in args.untied.split(",")):
        parser.error("--split-tied-gap needs joint among --strategies and distill/fit among --untied")
    corpus = load_corpus(args.corpus)
    options = _options(args.set)
    results = [run(m, int(k), corpus, args.max_tokens, args.strategies.split(","), timing=not args.no_timing,
                   options=options, untied=[s for s in args.untied.split(",") if s], cost_only=args.cost_only,
                   split_tied_gap=args.split_tied_gap,
                   heldout_seeds=[int(s) for s in args.heldout_seeds.split(",") if s])
               for m in args.models.split(",") for k in args.words.split(",")]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for r in results:
        print(f"{r['model']} words={r['words']}" + (f": bpc before {r['bpc_before']:.4f}" if "bpc_before" in r else ""))
        for policy, c in (r["cost"] or {}).items():
            print(f"  expand ({policy}: {c['strategies']}, tied {c['tied']}): {c['expand_seconds']:.0f} s wall, "
                  f"{c['cpu_seconds']:.0f} s CPU, +{c['parameters_added']:,} parameters")
        if r["cost"] and len(r["cost"]) == 2:
            print(f"  default / untie: {r['cost']['default']['expand_seconds'] / r['cost']['untie']['expand_seconds']:.2f}x wall, "
                  f"{r['cost']['default']['cpu_seconds'] / r['cost']['untie']['cpu_seconds']:.2f}x CPU")
        for name, row in sorted(r.get("strategies", {}).items(), key=lambda kv: kv[1]["bpc_after"]):
            print(f"  {name:22s} {row['bpc_change_percent']:+7.3f}%  KL mean {row['kl_mean']:.2e}  "
                  f"moved {100 * row['moved_mean']:.2f}%")
        for other in r.get("other_heldout_samples", []):
            print(f"  held-out seed {other['seed']} ({other['heldout_tokens']} tokens): " + ", ".join(
                f"{name} {change:+.3f}%" for name, change in sorted(other["bpc_change_percent"].items())))


def _plain(options: dict) -> dict:
    """The options as JSON data: a strategy's own options as their fields."""
    given = options.get("strategy_options", {})
    return {**options, **({"strategy_options": {n: dataclasses.asdict(o) for n, o in given.items()}} if given else {})}


def _options(items: list[str]) -> dict:
    """expand's options from --set items: "field=value" for an ExpandConfig field, "strategy.field=value" for a
    strategy's own option (e.g. joint.input_step=null), gathered into strategy_options."""
    from vocab_expand.strategies import STRATEGIES

    options, plugin = {}, {}
    for item in items:
        field, value = _option(item)
        name, dot, option = field.partition(".")
        if dot:
            plugin.setdefault(name, {})[option] = value
        else:
            options[field] = value
    if plugin:
        options["strategy_options"] = {name: STRATEGIES[name].options_class(**fields) for name, fields in plugin.items()}
    return options


def _option(item: str) -> tuple[str, object]:
    """"field=value" with the value read as JSON where it parses (numbers, null, true), else as a string."""
    from vocab_expand.strategies import STRATEGIES

    field, sep, value = item.partition("=")
    name, dot, option = field.partition(".")
    known = ({f.name for f in dataclasses.fields(STRATEGIES[name].options_class)}
             if dot and name in STRATEGIES and STRATEGIES[name].options_class else set())
    if not sep or (option not in known if dot else field not in {f.name for f in dataclasses.fields(ExpandConfig)}
                                                                   | set(ALIASES)):
        raise SystemExit(f"--set needs FIELD=VALUE with an ExpandConfig field or STRATEGY.FIELD=VALUE with a "
                         f"strategy's option, got {item!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


if __name__ == "__main__":
    main()
