"""Serving in real llama.cpp (issue 26): per model and design, side by side:
- texts that tokenize identically in llama.cpp and in the folder (held-out KJV verses, other-domain paragraphs
  and probe sentences with every new word), and new words that are one token in llama.cpp;
- greedy agreement (f32 file, 12 tokens from the same ids, 3 prompts);
- for the portable merge chains: the share of other text whose tokenization changed against the default
  expansion (KJV train and held-out verses, and paragraphs of another domain), and the intermediate pieces;
- seconds of the export (llama.cpp's converter) and of the check.

Models: the bundled smollm2-135m and gemma3-270m, the Llama 3 and Qwen 2 layouts (real vocabularies, tiny
random models: tests/serving_helpers.py), or any model folder. Words: the top N mined from the corpus's train
split on each tokenizer. Designs: default (ignore_merges entries) and portable (merge chains, lexicon = the
train split). Reproduce (about 15 minutes on 2 CPU cores):

    python benchmarks/bench_serving.py --models smollm2-135m,gemma3-270m,llama3,qwen2 --words 100 \\
        --out benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import vocab_expand as ve  # noqa: E402
from vocab_expand.corpus import Corpus  # noqa: E402
from vocab_expand.engines import missing_engines  # noqa: E402
from vocab_expand.config import ExpandConfig  # noqa: E402
from vocab_expand.expansion import plan_tokens  # noqa: E402

OTHER_DEFAULT = Path("/usr/share/doc/git/RelNotes")  # git's release notes: English of another domain
STATIC = dict(input_init="subword", output_init="mean")  # rows do not change tokenization; fast


def paragraphs(folder: Path | None, limit: int) -> list[str]:
    """Blank-line separated paragraphs of the .txt files under ``folder`` (none when it is missing)."""
    if folder is None or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.txt")):
        found += [p.strip() for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]
    return found[:limit]


def load(model: str, tmp: Path) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) for a bundled alias, a layout name (llama3, qwen2) or a folder."""
    if model in ("llama3", "qwen2"):
        from serving_helpers import layout_folder

        folder = layout_folder(model, tmp / model)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)
    return ve.load_model(model)


def changed(default, portable, texts: list[str]) -> list[int]:
    """[texts whose ids differ between the two plans' tokenizers, total] (words keep their ids in both)."""
    if not texts:
        return [0, 0]
    a = default.tokenizer(texts, add_special_tokens=False)["input_ids"]
    b = portable.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [sum(x != y for x, y in zip(a, b)), len(texts)]


def chain_figures(tokenizer, words: list[str], corpus: Corpus, other: list[str]) -> dict[str, object]:
    """What the portable design changes in other text, against the default design."""
    default = plan_tokens(tokenizer, words, ExpandConfig())
    start = time.perf_counter()
    portable = plan_tokens(tokenizer, words, ExpandConfig(portable=True), lexicon=corpus.train)
    pieces = sum(e.form == "piece" for e in portable.entries)
    return {"plan_seconds": round(time.perf_counter() - start, 2), "words_added": len(portable.entries) - pieces,
            "intermediates": pieces, "changed_train": changed(default, portable, corpus.train),
            "changed_heldout": changed(default, portable, corpus.heldout), "changed_other": changed(default, portable, other)}


def engine_figures(model, tokenizer, words: list[str], corpus: Corpus, check_texts: Corpus, portable: bool,
                   tmp: Path, max_texts: int) -> dict[str, object]:
    """Expand (static rows), export f32 with llama.cpp's converter and check in llama.cpp."""
    folder = tmp / f"expanded-{portable}"
    ve.expand(model, tokenizer, words, corpus=corpus, portable=portable, **STATIC).save(folder, force=True)
    try:
        result = ve.export(folder, tmp / f"model-{portable}.gguf", outtype="f32", check=True, corpus=check_texts,
                           max_texts=max_texts, force=True)
        check = result.check
    except ve.EngineError:
        check = json.loads((tmp / f"model-{portable}.gguf.check.json").read_text(encoding="utf-8"))
    saved = json.loads((folder / "expansion.json").read_text(encoding="utf-8"))
    return {"pre_tokenizer": check.get("pre_tokenizer"), "texts_identical": [check["texts"]["identical"], check["texts"]["total"]],
            "words_one_token": [check["new_words_one_token"]["count"], check["new_words_one_token"]["total"]],
            "greedy_agree": [check["greedy"]["agree"], check["greedy"]["total"]], "exact": check["exact"],
            "expansion_json_llama_cpp": saved["serving"]["llama_cpp"]["exact"],
            "export_seconds": round(check["export_seconds"], 1), "check_seconds": round(check["check_seconds"], 1)}


def run_model(name: str, args: argparse.Namespace, corpus: Corpus, other: list[str]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model, tokenizer = load(name, tmp)
        words = [c.word for c in ve.mine(tokenizer, corpus, args.words, progress=False)]
        rows = []
        chains = chain_figures(tokenizer, words, corpus, other)
        check_texts = Corpus("check", [], corpus.heldout[:args.max_texts] + other[:args.max_texts])
        for portable in (False, True):
            row = {"model": name, "design": "portable" if portable else "default", "words": len(words)}
            if portable:
                row |= chains
            if args.engine:
                row |= engine_figures(model, tokenizer, words, corpus, check_texts, portable, tmp, 2 * args.max_texts)
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,llama3,qwen2")
    parser.add_argument("--corpus", default="kjv")
    parser.add_argument("--other", type=Path, default=OTHER_DEFAULT,
                        help="folder of .txt files of another domain (default: git's release notes, if installed)")
    parser.add_argument("--other-limit", type=int, default=20_000, help="paragraphs of --other to use")
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--max-texts", type=int, default=300, help="held-out verses and other paragraphs checked, each")
    parser.add_argument("--no-engine", dest="engine", action="store_false",
                        help="only the tokenization figures (no llama.cpp)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args()
    if args.engine and missing_engines():
        sys.exit(f"llama.cpp is not installed ({'; '.join(missing_engines())}): run make install-engines, or pass "
                 "--no-engine")
    corpus = ve.load_corpus(args.corpus)
    other = paragraphs(args.other, args.other_limit)
    rows = [row for name in args.models.split(",") for row in run_model(name, args, corpus, other)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n",
                        encoding="utf-8")


if __name__ == "__main__":
    main()
