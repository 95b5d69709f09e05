"""The package's shape: no import cycles (lazy imports included), a light `import vocab_expand`, exactly the
public API exported, and every benchmark script still running at its smallest setting."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vocab_expand"
NAME = "vocab_expand"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth (functions too), except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports. `from X import name` counts as X.name when that is a module.
    Parent packages are left out: Python initializes them before any child, so they cannot close a cycle."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(max(0, node.level - 1)):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            edges |= {t for t in targets if t in modules and not name.startswith(t + ".") and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == 0 and (found := visit(nxt)):
                return found
        colour[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if colour[start] == 0 and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_hand_made_cycle_and_ignores_type_checking(tmp_path):
    pkg = tmp_path / NAME
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")  # lazy import: still an edge
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    graph = import_graph(pkg)
    assert graph[f"{NAME}.a"] == {f"{NAME}.b"} and graph[f"{NAME}.b"] == {f"{NAME}.c"}
    assert find_cycle(graph) is None
    (pkg / "c.py").write_text("def h():\n    import vocab_expand.a\n")
    assert find_cycle(import_graph(pkg)) == [f"{NAME}.a", f"{NAME}.b", f"{NAME}.c", f"{NAME}.a"]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and f"{NAME}.rows.compute" in graph[f"{NAME}.expansion"]
    assert find_cycle(graph) is None


def _fresh_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_importing_the_package_loads_no_heavy_dependency():
    """`import vocab_expand` stays light (measured with -X importtime in BENCHMARKS.md); names load on use."""
    out = _fresh_python("import sys, vocab_expand; print(sorted(m for m in ('torch', 'transformers', 'tokenizers', "
                        "'numpy', 'matplotlib') if m in sys.modules))")
    assert out.strip() == "[]"


def test_the_public_api_is_exactly_all_and_every_name_resolves():
    import vocab_expand

    for name in vocab_expand.__all__:
        assert getattr(vocab_expand, name) is not None, name
    assert {"expand", "expand_checkpoint", "CheckpointExpansion", "diagnose", "compare", "mine", "load_model",
            "load_corpus", "negative_logit_twin", "register_strategy", "DataDrivenStrategy",
            "VocabExpandError"} <= set(vocab_expand.__all__)
    with pytest.raises(AttributeError):
        vocab_expand.not_a_name  # noqa: B018


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALLEST = {  # each script at its smallest setting, on a tiny model folder and corpus (seconds each)
    "bench_expand.py": ["--matrices", "tiny", "--ks", "8", "--repeats", "1", "--methods", "ours_mean", "hf_mean"],
    "bench_diagnose.py": ["--model", "{model}", "--corpus", "{corpus}", "--words", "2", "--max-tokens", "200"],
    "bench_fit.py": ["--models", "{model}", "--corpus", "{corpus}", "--words", "2", "--max-tokens", "200",
                     "--strategies", "mean,subword/fit", "--set", "sample_max_positions=2000",
                     "--set", "distill_epochs=1"],
    "bench_mine.py": ["--model", "{model}", "--corpus", "{corpus}", "--megabytes", "0.02"],
    "bench_layouts.py": ["--corpus", "{corpus}", "--verses", "60", "--words", "3", "--layouts", "llama3_tiny,unigram_tiny"],
    "bench_tokenize.py": ["--models", "{model}", "--corpus", "{corpus}", "--sizes", "5", "--repeats", "1"],
    "bench_serving.py": ["--models", "{model}", "--corpus", "{corpus}", "--words", "2", "--no-engine",
                         "--other-limit", "50"],
    "bench_recipe.py": ["--model", "{model}", "--corpus", "{corpus}", "--words", "{words}", "--strategies",
                        "hf_default,mean", "--steps", "2", "--eval-every", "1", "--batch-size", "2", "--seq-len", "16",
                        "--warmup-steps", "0", "--eval-tokens", "200", "--quiet", "--figure", "recipe.png"],
    "bench_scale.py": ["--device", "cpu", "--dtype", "float32", "--cases", "body:tiny,model:{model}", "--tokenizer",
                       "{model}", "--corpus", "{corpus}", "--words", "2", "--max-tokens", "200",
                       "--set", "sample_max_positions=2000", "--set", "distill_epochs=1"],
}


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory, tiny_tokenizer):
    from helpers import TINY_TEXT, make_model

    root = tmp_path_factory.mktemp("bench")
    make_model("untied", len(tiny_tokenizer)).save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    make_model("tied", len(tiny_tokenizer)).save_pretrained(root / "tied")
    tiny_tokenizer.save_pretrained(root / "tied")
    lines = [t for t in TINY_TEXT for _ in range(10)] + [
        f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(60)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "words.txt").write_text("Jehoshaphat\nprophets\n", encoding="utf-8")
    return root


def test_every_benchmark_is_covered():
    assert {p.name for p in BENCHMARKS.glob("bench_*.py")} == set(SMALLEST)


@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_at_its_smallest_setting(script, bench_inputs, tmp_path):
    """A refactor that breaks a benchmark fails here, so BENCHMARKS.md stays reproducible."""
    args = [a.format(model=bench_inputs / "model", corpus=bench_inputs / "corpus.txt", words=bench_inputs / "words.txt")
            for a in SMALLEST[script]]
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text(encoding="utf-8"))


def test_bench_fit_splits_the_tied_gap_into_reading_and_predicting(bench_inputs, tmp_path):
    """--split-tied-gap: joint's row and the untied pair's rows swapped, each corner diagnosed on the tied model."""
    out = tmp_path / "split.json"
    args = ["--models", str(bench_inputs / "tied"), "--corpus", str(bench_inputs / "corpus.txt"), "--words", "2",
            "--max-tokens", "200", "--strategies", "joint", "--untied", "distill/fit", "--split-tied-gap",
            "--no-timing", "--set", "sample_max_positions=2000", "--set", "distill_epochs=1", "--out", str(out)]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fit.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))[0]["strategies"]
    assert set(rows) == {"joint", "distill/fit (untied)", "read A, predict E", "read E, predict F"}
    assert rows["joint"]["tied"] and not rows["read A, predict E"]["tied"]
    assert all(math.isfinite(row["bpc_after"]) for row in rows.values())
    untied = rows["distill/fit (untied)"]["bpc_after"]  # each corner swaps in rows of its own, so its figure moves
    assert rows["read A, predict E"]["bpc_after"] != untied and rows["read E, predict F"]["bpc_after"] != untied


def test_bench_fit_scores_the_same_rows_on_other_heldout_samples(bench_inputs, tmp_path):
    """--heldout-seeds: the rows learned once, scored again on held-out samples drawn with other seeds; seed 0 is
    the sample of the main figures, so it gives them back exactly."""
    out = tmp_path / "seeds.json"
    args = ["--models", str(bench_inputs / "tied"), "--corpus", str(bench_inputs / "corpus.txt"), "--words", "2",
            "--max-tokens", "200", "--strategies", "hf_default,subword", "--untied", "subword", "--no-timing",
            "--heldout-seeds", "0,1", "--out", str(out)]
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_fit.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))[0]
    same, other = result["other_heldout_samples"]
    assert (same["seed"], other["seed"]) == (0, 1)
    assert same["bpc_change_percent"] == {name: row["bpc_change_percent"] for name, row in result["strategies"].items()}
    assert set(other["bpc_change_percent"]) == {"hf_default", "subword", "subword (untied)"}
    assert all(math.isfinite(change) for change in other["bpc_change_percent"].values())


def test_bench_fit_sets_a_strategys_own_option(bench_inputs, tmp_path):
    """--set STRATEGY.FIELD=VALUE reaches that strategy's options (joint.input_step=null: the step chosen on the
    calibration slice, and recorded); an unknown one is refused before any work."""
    out = tmp_path / "step.json"
    base = [sys.executable, str(BENCHMARKS / "bench_fit.py"), "--models", str(bench_inputs / "tied"), "--corpus",
            str(bench_inputs / "corpus.txt"), "--words", "2", "--max-tokens", "200", "--strategies", "joint",
            "--untied", "", "--no-timing", "--set", "sample_max_positions=2000", "--set", "distill_epochs=1"]
    done = subprocess.run([*base, "--set", "joint.input_step=null", "--out", str(out)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    joint = json.loads(out.read_text(encoding="utf-8"))[0]["strategies"]["joint"]
    path = joint["joint_input_step_path"]
    assert path[0]["share"] == 0.0 and joint["joint_input_step"] == min(path, key=lambda p: p["calibration_nats"])["share"]
    refused = subprocess.run([*base, "--set", "joint.no_such=1", "--out", str(tmp_path / "x.json")],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode != 0 and "STRATEGY.FIELD=VALUE" in refused.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("layout", ["tied", "untied"])
def test_no_deprecation_or_future_warning_on_the_current_transformers(layout, tiny_tokenizer):
    """expand with a corpus (distill and fit, or joint: the paths that read key/value caches) raises no
    DeprecationWarning or FutureWarning, whichever module the warning is attributed to: a routine transformers
    upgrade must not break the default (`past_key_values` went deprecated in 5.2x, removed in 5.40)."""
    import warnings

    import vocab_expand as ve
    from helpers import make_model

    docs = [f"And Jehoshaphat said unto the prophets, {i} times." for i in range(300)]
    model = make_model(layout, len(tiny_tokenizer))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ve.expand(model, tiny_tokenizer, ["Jehoshaphat"], corpus=docs, sample_max_positions=1024, distill_epochs=1)
    assert result.report["input_strategy"] == ("joint" if layout == "tied" else "distill")
    found = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, (DeprecationWarning,
                                                                                                FutureWarning))]
    assert not found, found


def test_every_strategy_module_is_imported_and_registers_a_strategy():
    """A module or folder under strategies/ that nothing imports would register nothing: each one is imported by
    strategies/__init__.py and defines a registered strategy (STRATEGIES maps to a class of that module)."""
    from vocab_expand.strategies import STRATEGIES

    folder = Path(__file__).resolve().parents[1] / "src" / "vocab_expand" / "strategies"
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "base"))
    modules += sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    registered = {cls.__module__.split(".")[2] for cls in STRATEGIES.values() if cls.__module__.startswith("vocab_expand.")}
    assert len(modules) >= 9
    for name in modules:
        assert name in registered, f"strategies/{name} registers no strategy (or is not imported by __init__.py)"


def test_families_register_in_their_stated_order():
    """detect_family tries families in registration order: the registry follows FAMILY_ORDER, and every module
    under families/ that defines a family is registered."""
    from vocab_expand.families import FAMILY_ORDER, family_names

    assert tuple(family_names()) == FAMILY_ORDER
    folder = Path(__file__).resolve().parents[1] / "src" / "vocab_expand" / "families"
    defining = sorted(p.stem for p in folder.glob("*.py")
                      if p.stem not in ("__init__", "base") and "@register_family" in p.read_text(encoding="utf-8"))
    assert defining == ["byte_level", "sentencepiece", "unigram"]


def test_config_is_a_leaf_and_the_registry_hands_it_the_options_classes():
    """config.py imports no part of the package but errors and options (the registry writes into it, never the
    reverse), and the forms it offers are the ones families build."""
    graph = import_graph()
    assert graph[f"{NAME}.config"] <= {f"{NAME}.errors", f"{NAME}.options"}
    from vocab_expand import config
    from vocab_expand.families import FORMS_OF
    from vocab_expand.strategies import get_strategy

    assert set(FORMS_OF) == set(config.FORM_CHOICES)
    assert config.options_class_of("fit") is get_strategy("fit").options_class
    assert config.ExpandConfig(fit_reg=0.5).options_for("fit") == get_strategy("fit").options_class(reg=0.5)


def test_a_fresh_config_import_names_the_missing_registry():
    """Without the registry, a strategy's options cannot be read: one line says what to import."""
    out = _fresh_python("from vocab_expand.config import ExpandConfig\n"
                        "try:\n    ExpandConfig(fit_reg=0.5)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
                        "import vocab_expand\nprint(vocab_expand.ExpandConfig(fit_reg=0.5).fit_reg)")
    assert "InvalidInputError" in out and "import vocab_expand.strategies" in out and out.strip().endswith("0.5")


# Keys only expansion.json has: a module that writes one of them (a dict literal's key, or an item assigned)
# assembles the record.
RECORD_KEYS = {"words_skipped", "tokens_added", "fine_tuning", "serving", "files"}


def _written_keys(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            found |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for target in getattr(node, "targets", None) or [node.target]:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    found.add(target.slice.value)
    return found


def test_expansion_json_is_built_in_one_place():
    """report.py builds expansion.json (expansion_record, with_source, saved_record) from figures computed
    elsewhere; no other module writes its keys."""
    writers = {path.relative_to(PACKAGE).as_posix(): sorted(_written_keys(ast.parse(path.read_text("utf-8"))) & RECORD_KEYS)
               for path in PACKAGE.rglob("*.py")}
    assert {name for name, keys in writers.items() if keys} == {"report.py"}, writers
