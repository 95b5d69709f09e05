"""Hostile input: every case asserts its one-line message, its exit status, and that nothing the user had was
changed or deleted (checksums of the input model folder and of any existing output, before and after).

Cases run the CLI in-process (cli.main) on a tiny locally built model, so the suite needs no network and
takes seconds. Bugs must keep their traceback: only the project's own errors become one line.
"""

from __future__ import annotations

import errno
import math
import re
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from vocab_expand import io as vio
from vocab_expand.cli import main
from vocab_expand.errors import InvalidInputError, OutputNotWritableError

from helpers import make_model


def digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 (files) or "dir", for every entry under ``path`` (or the file itself)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for entry in sorted(path.rglob("*")):
        rel = str(entry.relative_to(path))
        out[rel] = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "dir"
    return out


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> Path:
    path = tmp_path / "model"
    make_model("tied", len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    (path / "notes.txt").write_text("the user's own notes, kept inside the model folder")
    return path


@pytest.fixture
def existing_output(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier output")
    return out


def run_refused(args: list[str], capsys, message: str, *kept: Path, status: int = 2) -> str:
    """Run the CLI; assert the status, one error line holding ``message``, and ``kept`` unchanged."""
    before = {p: digest(p) for p in kept}
    assert main(args) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    for p in kept:
        assert digest(p) == before[p], f"{p} changed"
    return err[-1]


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# Item 2: an output that overlaps the input model, or is the current folder or a parent.
@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_the_input_model_is_refused(model_dir, tmp_path, capsys, where):
    out = {"same": model_dir, "inside": model_dir / "expanded", "contains": tmp_path}[where]
    expected = {"same": "is the input", "inside": "is inside the input", "contains": "contains the input"}[where]
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--input-init", "subword",
                 "--output-init", "mean", "-o", str(out), "--force"], capsys, expected, model_dir)


@pytest.mark.parametrize("out", [".", "..", "./", "sub/.."])
def test_output_dot_and_dotdot_are_refused(model_dir, tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", out, "--force"], capsys,
                "must name a new folder", model_dir, tmp_path)
    assert no_temporaries(tmp_path) and no_temporaries(work)


def test_output_containing_the_current_folder_is_refused(model_dir, tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "a"), "--force"],
                capsys, "contains the current folder", model_dir, tmp_path / "a")


# Item 5: the output location is checked before any work.
def test_unwritable_output_fails_before_loading(model_dir, tmp_path, capsys, monkeypatch):
    import vocab_expand.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(blocker / "out")], capsys,
                "is a file, not a folder", model_dir, blocker)

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "touch", read_only)
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "out")], capsys,
                "Read-only file system", model_dir)
    run_refused(["diagnose", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "rep")],
                capsys, "Read-only file system", model_dir)


# Item 3: the swap is atomic, rolls back, cleans up after crashed runs, and follows the umask.
def write_marker(target: Path, text: str, force: bool = True) -> None:
    with vio.atomic_directory(target, force=force) as tmp:
        (tmp / "marker.txt").write_text(text)


@pytest.mark.parametrize("failing_rename", [0, 1])
def test_swap_failure_at_each_rename_keeps_the_old_output(existing_output, monkeypatch, failing_rename):
    before = digest(existing_output)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) - 1 == failing_rename:
            raise OSError(errno.EIO, "injected failure")
        return real(src, dst)

    monkeypatch.setattr(vio.os, "rename", rename)
    with pytest.raises(OSError, match="injected"):
        write_marker(existing_output, "new")
    monkeypatch.setattr(vio.os, "rename", real)
    assert digest(existing_output) == before and no_temporaries(existing_output.parent)


def test_failure_while_writing_keeps_the_old_output(existing_output):
    before = digest(existing_output)
    with pytest.raises(RuntimeError):
        with vio.atomic_directory(existing_output, force=True) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("crash while writing")
    assert digest(existing_output) == before and no_temporaries(existing_output.parent)


@pytest.mark.parametrize("method", ["model", "checkpoint"])
def test_disk_full_while_saving_is_one_line(method, model_dir, existing_output, tmp_path, capsys, monkeypatch):
    import vocab_expand.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if method == "model":  # the model loaded and saved
        monkeypatch.setattr(type(make_model("tied", 8)), "save_pretrained", full)
    else:  # the folder rewritten on disk (static strategies, no corpus)
        monkeypatch.setattr(checkpoint, "write_weights", full)
    extra = ["--load-model"] if method == "model" else []
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(existing_output), "--force",
                 *extra], capsys, "No space left on device", model_dir, existing_output)
    assert no_temporaries(tmp_path)


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        pid -= 1


def test_stale_temporaries_of_crashed_runs_are_removed(existing_output):
    stale = existing_output.with_name(f".out.tmp-{dead_pid()}-abcd")
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = existing_output.with_name(f".out.tmp-{os.getppid()}-ef01")  # a writer still running: left alone
    live.mkdir()
    write_marker(existing_output, "new")
    assert not stale.exists() and live.exists()
    assert (existing_output / "marker.txt").read_text() == "new"


def test_crash_between_the_renames_is_rolled_back_on_the_next_run(tmp_path):
    target = tmp_path / "out"
    old = tmp_path / f".out.old-{dead_pid()}"
    old.mkdir()
    (old / "keep.txt").write_text("an earlier output")
    vio.clean_stale(target)
    assert (target / "keep.txt").read_text() == "an earlier output" and not old.exists()


def test_output_folders_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        write_marker(tmp_path / "out", "x")
        vio.write_text_atomic(tmp_path / "words.txt", "Zion\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "words.txt").stat().st_mode) == 0o644


# Item 4: the words file is read as written.
@pytest.mark.parametrize("text, expected", [
    ("Nebu\x0bchad\n", "control character '\\x0b'"),
    ("Zion\nJeho\tshaphat\n", "words.txt:2: the word 'Jeho\\tshaphat'"),
    ("Zion\nMel\u2028chizedek\n", "control character '\\u2028'"),
    ("Abc\x85def\n", "control character '\\x85'"),
])
def test_words_with_control_characters_are_refused_with_their_line(model_dir, tmp_path, capsys, text, expected):
    words = tmp_path / "words.txt"
    words.write_text(text, encoding="utf-8")
    run_refused(["expand", "--model", str(model_dir), "--words", str(words), "-o", str(tmp_path / "o")], capsys,
                expected, model_dir, words)
    assert not (tmp_path / "o").exists()


def test_words_file_bom_crlf_and_mine_columns():
    from vocab_expand.cli import parse_words

    assert parse_words("\ufeffZion\r\nNebuchadnezzar\r\n# note\n\n", "w") == ["Zion", "Nebuchadnezzar"]
    assert parse_words("Jehoshaphat\tmid\t12\nZion\tinitial\t3\n", "w") == ["Jehoshaphat", "Zion"]
    with pytest.raises(InvalidInputError, match=r"w:1: "):  # one plain line, so not a mine file: tabs refused
        parse_words("Jehoshaphat\tmid\t12\nZe\trubbabel\n", "w")


# Item 6: bugs keep their traceback; only the project's own errors become one line.
def test_a_bug_keeps_its_traceback(model_dir, tmp_path, monkeypatch):
    import vocab_expand.expansion as expansion

    def buggy(*args, **kwargs):
        raise TypeError("a bug inside vocab-expand")

    monkeypatch.setattr(expansion, "expand", buggy)
    with pytest.raises(TypeError, match="a bug inside"):
        main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--load-model", "-o", str(tmp_path / "o")])
    with pytest.raises(OutputNotWritableError):  # and the API raises the family, which stays a PermissionError
        vio.check_output_dir(tmp_path / "model" / "notes.txt" / "x")


# Item 8: every numeric option is validated, before any work, by the config that defines it.
@pytest.mark.parametrize("args, message", [
    (["diagnose", "--max-tokens", "0"], "max_tokens must be an integer >= 1"),
    (["diagnose", "--max-tokens", "-5"], "max_tokens must be an integer >= 1"),
    (["mine", "--min-count", "-1"], "min_count must be an integer >= 1"),
    (["mine", "--min-length", "-3"], "min_length must be an integer >= 1"),
    (["mine", "--top", "0"], "top_k must be an integer >= 1"),
    (["mine", "--pattern", "([a-z"], "is not a valid regular expression"),
    (["expand", "--sample-max-positions", "1"], "sample_max_positions must be an integer >= 1024"),
    (["expand", "--sample-max-positions", "100"], "sample_max_positions must be an integer >= 1024"),
    (["expand", "--distill-epochs", "-1"], "distill_epochs must be an integer >= 0"),
    (["expand", "--pad-to-multiple-of", "0"], "pad_to_multiple_of must be positive"),
    (["expand", "--fit-reg", "-1"], "fit_reg must be from 0 to"),
    (["expand", "--cov-scale", "-1"], "cov_scale must be >= 0"),
    (["compare", "--checkpoint-every", "0"], "checkpoint_every must be a positive integer"),
    (["compare", "--warmup-steps", "-5"], "warmup_steps must be an integer >= 0"),
    (["compare", "--steps", "0"], "steps must be a positive integer"),
    (["compare", "--max-time", "-1"], "max_time_s must be >= 0"),
    (["demo", "--top", "0"], "top_k must be an integer >= 1"),
    # Round 3, item 5: inf is refused wherever it is not meaningful.
    (["expand", "--input-init", "mean_cov", "--output-init", "mean", "--cov-scale", "inf"], "cov_scale must be a finite"),
    (["expand", "--joint-input-step", "inf"], "joint_input_step must be a finite number"),
    (["expand", "--joint-input-weight", "nan"], "joint_input_weight must be"),
    (["compare", "--lr", "inf"], "learning_rate must be a finite number"),
    (["compare", "--lr-new-rows", "inf"], "lr_new_rows must be a finite number"),
    (["compare", "--lr", "1e38"], "learning_rate must be at most 10"),
    # Item 10: a sequence of one token trains on nothing.
    (["compare", "--seq-len", "1"], "seq_len must be at least 2"),
    # Item 18: one seed rule for every command; fit_reg within what the solve takes.
    (["expand", "--seed", "-1"], "seed must be an integer from 0"),
    (["diagnose", "--seed", "-1"], "seed must be an integer from 0"),
    (["compare", "--seed", "-1"], "seed must be an integer from 0"),
    (["expand", "--fit-reg", "inf"], "fit_reg must be from 0 to"),
    (["expand", "--fit-reg", "1e30"], "fit_reg must be from 0 to"),
    # Item 6: a strategy named for a side it does not initialize, before the model is loaded.
    (["expand", "--input-init", "fit", "--output-init", "mean"], "'fit' initializes output rows only"),
    (["expand", "--output-init", "distill"], "'distill' initializes input rows only"),
    # Item 10: --forms applies to vocabulary entries only.
    (["expand", "--kind", "added", "--forms", "both"], "forms='both' applies to vocabulary entries"),
])
def test_numeric_options_are_validated_before_any_work(model_dir, tmp_path, capsys, monkeypatch, args, message):
    import vocab_expand.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded the model before validating"))
    monkeypatch.setattr(loading, "tokenizer_only", lambda *a, **k: pytest.fail("loaded the tokenizer first"))
    out = tmp_path / ("words.txt" if args[0] == "mine" else "out")
    extra = [] if args[0] in ("mine", "demo") else ["--word", "Jehoshaphat"]
    run_refused([*args, "--model", str(model_dir), "--corpus", str(tmp_path / "none.txt"), *extra, "-o", str(out)],
                capsys, message, model_dir)
    assert not out.exists()


# Item 6: damaged files, bad corpora, bad patterns: one line that names the file.
def damaged_copy(model_dir: Path, tmp_path: Path, how: str) -> Path:
    import shutil

    import torch

    copy = tmp_path / f"model-{how}"
    shutil.copytree(model_dir, copy)
    weights = copy / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":
        weights.write_bytes(b"not a safetensors file" * 4)
    else:  # a pickle that runs code when unpickled: weights_only refuses it
        weights.unlink()
        torch.save({"x": _Evil()}, copy / "pytorch_model.bin")
    return copy


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("how, message", [("truncated", "looks truncated or damaged"),
                                          ("garbage", "looks truncated or damaged"),
                                          ("pickle", "refused for safety")])
def test_damaged_weights_are_one_line(model_dir, tmp_path, capsys, how, message):
    damaged = damaged_copy(model_dir, tmp_path, how)
    line = run_refused(["expand", "--model", str(damaged), "--word", "Jehoshaphat", "-o", str(tmp_path / "o")], capsys,
                       message, damaged, model_dir)
    assert str(damaged) in line and not (tmp_path / "o").exists()


def test_truncated_gguf_is_one_line(tmp_path, capsys, monkeypatch):
    from vocab_expand.loading import bundled_gguf

    try:
        source = bundled_gguf("smollm2-135m")
    except ModuleNotFoundError:
        pytest.skip("the bundled model is not installed")
    monkeypatch.setenv("VOCAB_EXPAND_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "cut.gguf"
    with source.open("rb") as handle:
        gguf.write_bytes(handle.read(3_000_000))
    run_refused(["mine", "--model", str(gguf), "--corpus", str(tmp_path / "none.txt")], capsys,
                "looks truncated or damaged", gguf)
    run_refused(["expand", "--model", str(gguf), "--word", "Zion", "-o", str(tmp_path / "o")], capsys,
                "looks truncated or damaged", gguf)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def corpus_refused(model_dir, tmp_path, capsys, corpus: Path, message: str) -> None:
    run_refused(["mine", "--model", str(model_dir), "--corpus", str(corpus), "-o", str(tmp_path / "w.txt")], capsys,
                message, model_dir, corpus)
    assert not (tmp_path / "w.txt").exists()


def test_malformed_jsonl_names_file_and_line(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three",}\n', encoding="utf-8")
    corpus_refused(model_dir, tmp_path, capsys, corpus, f"{corpus}:3: not valid JSON")


def test_binary_txt_names_file_and_line(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"a fine line\n\x89PNG\r\n\x1a\n\xff\xfe\n")
    corpus_refused(model_dir, tmp_path, capsys, corpus, f"{corpus}:2: not UTF-8 text")


def test_fifo_in_a_corpus_folder_is_skipped_not_read(model_dir, tmp_path, capsys):
    from vocab_expand.corpus import load_corpus

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("And Jehoshaphat said unto the king\n" * 30, encoding="utf-8")
    os.mkfifo(folder / "b.txt")  # reading it would block forever
    corpus = load_corpus(folder)
    assert len(corpus.train) + len(corpus.heldout) == 30
    corpus_refused(model_dir, tmp_path, capsys, folder / "b.txt", "not a regular file")


# Item 7: a hub id without network fails fast with what to use offline.
def test_hub_id_without_network_fails_fast(tmp_path, capsys, monkeypatch):
    from vocab_expand import loading

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the probe is refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    loading._probe.cache_clear()
    run_refused(["mine", "--model", "nobody/no-such-model", "--corpus", str(tmp_path / "none.txt")], capsys,
                "Offline, use a bundled alias")
    run_refused(["expand", "--model", "nobody/no-such-model", "--word", "Zion", "-o", str(tmp_path / "o")], capsys,
                "hub cannot be reached")
    assert loading._probe.cache_info().misses == 1  # probed once, then the answer is reused: no retries
    loading._probe.cache_clear()


# Item 13: a corpus given as a path string is loaded, never read as one-character documents.
def test_corpus_as_a_path_string(model_dir, tmp_path, tiny_tokenizer):
    import vocab_expand as ve
    from vocab_expand.errors import InvalidTypeError

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(200)),
                      encoding="utf-8")
    found = ve.mine(tiny_tokenizer, str(corpus), top_k=3, min_count=2, progress=False)
    assert "Jehoshaphat" in [c.word for c in found]
    model = make_model("untied", len(tiny_tokenizer))
    result = ve.expand(model, tiny_tokenizer, ["Jehoshaphat"], corpus=str(corpus), sample_max_positions=1024,
                       distill_epochs=1)
    assert result.report["data_driven"]["sample"]["occurrences_in_training_text"]["Jehoshaphat"] > 100
    with pytest.raises(InvalidTypeError, match="corpus must be a Corpus"):
        ve.mine(tiny_tokenizer, ["a list", "of documents"], progress=False)


def test_mine_output_onto_its_own_corpus_is_refused(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("And Jehoshaphat said unto the king\n" * 30, encoding="utf-8")
    run_refused(["mine", "--model", str(model_dir), "--corpus", str(corpus), "-o", str(corpus), "--force"], capsys,
                "is the input", corpus, model_dir)


# Item 10: fallback words are printed; a run that adds nothing saves nothing unless asked.
def test_every_word_skipped_saves_nothing_unless_asked(model_dir, existing_output, tmp_path, capsys):
    args = ["expand", "--model", str(model_dir), "--word", "the", "--word", "a", "-o", str(existing_output), "--force"]
    run_refused(args, capsys, "every word was skipped", model_dir, existing_output)
    assert main(args + ["--allow-empty"]) == 0
    assert (existing_output / "config.json").is_file() and not (existing_output / "keep.txt").exists()


def test_fallback_words_are_printed(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join([f"And Jehoshaphat said unto the prophets, {i} times." for i in range(200)]
                                + ["Once only: Nebuchadnezzar."]), encoding="utf-8")
    assert main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--word", "Nebuchadnezzar",
                 "--corpus", str(corpus), "--sample-max-positions", "2048", "--distill-epochs", "1",
                 "-o", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"(fit|joint): 1 words too rare in the text keep their fallback rows: Nebuchadnezzar", printed), printed


# Item 9: diagnose names the words that never occur in the held-out split, and still reports.
def test_diagnose_lists_absent_words(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(200)),
                      encoding="utf-8")
    assert main(["diagnose", "--model", str(model_dir), "--corpus", str(corpus), "--word", "Zerubbabel",
                 "--strategies", "mean", "--no-generate", "-o", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "1 words never occur in the held-out split: Zerubbabel" in printed and "SAFE" in printed


# Item 1: compare --force never deletes a folder that is not a run.
def test_compare_force_into_a_folder_that_is_not_a_run(model_dir, existing_output, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(300)),
                      encoding="utf-8")
    run_refused(["compare", "--model", str(model_dir), "--corpus", str(corpus), "--word", "Jehoshaphat",
                 "--strategies", "mean", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-tokens", "50",
                 "-o", str(existing_output), "--force"], capsys, "not a compare run folder", existing_output, model_dir)


def test_twin_takes_a_corpus_path(tmp_path, tiny_tokenizer):
    import torch

    import vocab_expand as ve

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(50)),
                      encoding="utf-8")
    model = make_model("tied", len(tiny_tokenizer), seed=1)
    with torch.no_grad():  # a shared direction in the final states, as real models have
        model.model.norm.weight.add_(3.0)
        model.get_input_embeddings().weight.add_(0.5)
    twin = ve.negative_logit_twin(model, tiny_tokenizer, str(corpus))
    assert twin is not model


# Round 3 (issue 27). Kinds covered: 1 security (names read from files), 4 data loss (overlap, special files,
# concurrent runs, symlinks), 4 silent (non-finite rows, strategies, --word, NUL text), 9 tracebacks, 1 memory.
def text_corpus(path: Path, lines: int = 200) -> Path:
    path.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(lines)),
                    encoding="utf-8")
    return path


# Item 1: a shard name read from the index may not leave the model folder, on the disk path or the loaded one.
@pytest.mark.parametrize("shard", ["../x/rest.safetensors", "/tmp/rest.safetensors", "..", "sub/rest.safetensors"])
@pytest.mark.parametrize("load", [False, True])
def test_shard_names_outside_the_model_folder_are_refused(model_dir, tmp_path, capsys, shard, load):
    (model_dir / "model.safetensors").rename(model_dir / "rest.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "rest.safetensors",
                                            "model.norm.weight": shard}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    victim = tmp_path / "x" / "rest.safetensors"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's file")
    out = tmp_path / "o" / "d" / "out"
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(out),
                 *(["--load-model"] if load else [])], capsys, "not a plain file name", model_dir, victim)
    assert not out.exists()


def test_file_names_in_a_config_are_checked(model_dir, tmp_path, capsys):
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config | {"vocab_file": "../../etc/passwd"}))
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "o")], capsys,
                "not a plain file name", model_dir)


# Item 2: for every command, no output may be, contain or sit inside any input (model, corpus, words file).
@pytest.mark.parametrize("command, which", [(c, "corpus") for c in ("expand", "diagnose", "mine", "compare", "demo")]
                         + [(c, "words") for c in ("expand", "diagnose", "compare")])
def test_outputs_never_overlap_the_corpus_or_the_words_file(model_dir, tmp_path, capsys, command, which):
    data = tmp_path / "data"
    data.mkdir()
    corpus, words = text_corpus(data / "corpus.txt"), data / "words.txt"
    words.write_text("Jehoshaphat\n")
    (data / "neighbour.txt").write_text("a neighbouring file")
    given = ["--corpus", str(corpus)] + (["--words", str(words)] if command not in ("mine", "demo") else [])
    if which == "words":  # the corpus elsewhere, so that only the words file overlaps
        given[1] = str(text_corpus(tmp_path / "elsewhere.txt"))
    out = data if command != "mine" else (words if which == "words" else corpus)
    run_refused([command, "--model", str(model_dir), *given, "-o", str(out), "--force"], capsys,
                "the input", data, model_dir)


# Item 3: an output that exists must be of the expected kind: a FIFO or device is never replaced.
def test_special_files_are_never_replaced(model_dir, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    corpus = text_corpus(tmp_path / "c.txt")
    for out in (fifo, Path("/dev/null")):
        run_refused(["mine", "--model", str(model_dir), "--corpus", str(corpus), "-o", str(out), "--force"], capsys,
                    "special file")
        assert not out.is_file() and (out.is_fifo() or out.is_char_device())
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(fifo), "--force"], capsys,
                "special file")
    with pytest.raises(vio.OutputExistsError, match="folder, not a file"):
        vio.check_output_file(tmp_path, force=True)


# Item 4: of two runs writing the same new output without force, the later fails and the first is kept.
@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_concurrent_run_never_replaces_the_first_ones_output(tmp_path, kind):
    target = tmp_path / "out"
    with pytest.raises(vio.OutputExistsError, match="already exists"):
        if kind == "folder":
            with vio.atomic_directory(target) as tmp:
                (tmp / "marker.txt").write_text("second")
                write_marker(target, "first", force=False)  # the other run finishes while this one writes
        else:
            real = vio._swap_in

            def other_run_first(tmp, target_, force):
                target_.write_text("first")
                real(tmp, target_, force)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(vio, "_swap_in", other_run_first)
                vio.write_text_atomic(target, "second", force=False)
    assert (target / "marker.txt" if kind == "folder" else target).read_text() == "first"
    assert no_temporaries(tmp_path)


def test_two_expand_runs_to_one_new_output(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(out)]
    assert main(args) == 0
    first = digest(out)
    run_refused(args, capsys, "already exists", out)
    assert digest(out) == first


# Item 5: whatever the options, a model whose new rows are not finite is never saved.
@pytest.mark.parametrize("load", [False, True])
def test_non_finite_rows_are_never_saved(model_dir, tmp_path, capsys, monkeypatch, load):
    from vocab_expand.strategies.mean import Mean

    monkeypatch.setattr(Mean, "rows", lambda self, old, request: torch.full((request.k, old.shape[1]), math.inf))
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "o"),
                 *(["--load-model"] if load else [])], capsys, "hold inf or nan, so nothing was saved", model_dir)
    assert not (tmp_path / "o").exists() and no_temporaries(tmp_path)


def test_a_training_run_whose_loss_is_not_finite_stops(model_dir, tmp_path, capsys, monkeypatch):
    """A run whose weights went inf or nan (here: made so after the second update) stops with one line at that
    step. An inf loss with finite weights, a float16 overflow whose update was skipped, goes on
    (tests/test_devices.py)."""
    from vocab_expand.training import loop

    real, done = loop._optimizer_step, []

    def diverging(model, *args):
        facts = real(model, *args)
        done.append(1)
        if len(done) == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)
            return facts | {"train_loss": math.nan}
        return facts

    monkeypatch.setattr(loop, "_optimizer_step", diverging)
    run_refused(["compare", "--model", str(model_dir), "--corpus", str(text_corpus(tmp_path / "c.txt", 300)),
                 "--word", "Jehoshaphat", "--strategies", "mean", "--steps", "5", "--batch-size", "2", "--seq-len",
                 "16", "--eval-tokens", "50", "-o", str(tmp_path / "runs")], capsys,
                "the training loss is nan at step 2, so training stopped; lower the learning rate", model_dir)
    assert len(done) == 2 and not list((tmp_path / "runs").rglob("final"))


# Item 6: what runs is what was named, or the run is refused in one line; labels say what ran.
@pytest.mark.parametrize("pair, message", [
    (["--input-init", "subword", "--output-init", "fit"], "so subword/fit cannot run as named"),
    (["--input-init", "distill", "--output-init", "mean"], "so distill/mean cannot run as named"),
])
def test_a_tied_model_never_swaps_the_named_strategies(model_dir, tmp_path, capsys, pair, message):
    corpus = text_corpus(tmp_path / "c.txt")
    for extra in (["--corpus", str(corpus)], []):  # without a corpus the message names the same pair
        run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", *pair, *extra, "-o",
                     str(tmp_path / "o")], capsys, message, model_dir)
    run_refused(["diagnose", "--model", str(model_dir), "--word", "Jehoshaphat", "--corpus", str(corpus),
                 "--strategies", "mean/distill", "-o", str(tmp_path / "r")], capsys, "'distill' initializes input rows")


def test_labels_say_what_ran():
    from vocab_expand.pairs import ran_label

    assert ran_label("distill/fit", {"input_strategy": "joint", "output_strategy": "joint"}) == "distill/fit (ran joint)"
    assert ran_label("subword/mean", {"input_strategy": "mean", "output_strategy": "mean"}) == "subword/mean (ran mean)"
    assert ran_label("mean", {"input_strategy": "mean", "output_strategy": "mean"}) == "mean"


# Item 7: a --word is one word, never a comment.
def test_word_options_are_one_word_each(model_dir, tmp_path, capsys):
    from vocab_expand.cli import build_parser, read_words

    args = build_parser().parse_args(["expand", "--word", "#include", "--word", " #pragma ", "-o", "x"])
    assert read_words(args) == ["#include", "#pragma"]
    run_refused(["expand", "--model", str(model_dir), "--word", "Zerubbabel\nJehoshaphat", "-o", str(tmp_path / "o")],
                capsys, "holds the control character '\\n'; give one word per --word", model_dir)


# Item 8: text with NUL bytes (UTF-16 without a BOM) is refused; a run that finds nothing exits 2.
def test_utf16_corpus_without_bom_and_a_run_that_finds_nothing(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("And Jehoshaphat said\nunto the king\n".encode("utf-16-le"))
    corpus_refused(model_dir, tmp_path, capsys, corpus, f"{corpus}:1: the text holds NUL bytes")
    run_refused(["mine", "--model", str(model_dir), "--corpus", str(text_corpus(tmp_path / "ok.txt")), "--min-count",
                 "100000", "-o", str(tmp_path / "w.txt")], capsys, "found no word", model_dir)
    assert not (tmp_path / "w.txt").exists()


# Item 9: a words file full of NULs is refused at its first line, with a short message, as a stream.
def test_a_words_file_of_nul_bytes(model_dir, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_bytes(b"\x00" * (8 << 20))
    line = run_refused(["expand", "--model", str(model_dir), "--words", str(words), "-o", str(tmp_path / "o")], capsys,
                       f"{words}:1: the line is longer than 1024 bytes", model_dir, words)
    assert len(line) < 400
    from vocab_expand.cli import shown

    assert len(shown("x" * 100_000)) < 80


# Item 10: a symlinked output is replaced itself, with nothing left behind; a link loop is named as one.
def test_a_symlinked_output_and_a_link_loop(model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("the user's data")
    link = tmp_path / "link"
    link.symlink_to(data)
    assert main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(link), "--force"]) == 0
    assert (data / "keep.txt").read_text() == "the user's data" and sorted(p.name for p in data.iterdir()) == ["keep.txt"]
    assert not link.is_symlink() and (link / "config.json").is_file() and no_temporaries(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    run_refused(["expand", "--model", str(loop), "--word", "Jehoshaphat", "-o", str(tmp_path / "o")], capsys,
                "is a broken link or a link loop")


# Item 11: safetensors' own error for a full disk is one line, and the old output is kept.
def test_safetensors_disk_full_is_one_line(model_dir, existing_output, tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: I/O error: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)  # what save_pretrained calls
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--load-model", "-o",
                 str(existing_output), "--force"], capsys, "No space left on device", model_dir, existing_output)
    assert no_temporaries(tmp_path)


# Item 12: an embedding smaller than the tokenizer is one line, with a corpus too.
def test_an_embedding_smaller_than_the_tokenizer(tmp_path, tiny_tokenizer, capsys):
    small = tmp_path / "small"
    make_model("untied", len(tiny_tokenizer) - 20).save_pretrained(small)
    tiny_tokenizer.save_pretrained(small)
    for extra in ([], ["--corpus", str(text_corpus(tmp_path / "c.txt"))]):
        run_refused(["expand", "--model", str(small), "--word", "Jehoshaphat", *extra, "-o", str(tmp_path / "o")],
                    capsys, "embedding rows but the tokenizer has", small)


# Item 13: damaged safetensors headers on the on-disk path.
@pytest.mark.parametrize("header", [b"[]", b"[" * 100_000 + b"]" * 100_000, b'{"x": 5}', b'{"x": {"dtype": "F32"}}'])
def test_damaged_safetensors_headers(model_dir, tmp_path, capsys, header):
    import struct

    (model_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    run_refused(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(tmp_path / "o")], capsys,
                "cannot read", model_dir)


# Item 14: deeply nested JSON in a .jsonl corpus.
def test_deeply_nested_jsonl(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    corpus_refused(model_dir, tmp_path, capsys, corpus, f"{corpus}:2: the JSON is nested too deeply")


# Item 15: compare -o FILE, with and without --force.
def test_compare_into_a_file(model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    for force in ([], ["--force"]):
        run_refused(["compare", "--model", str(model_dir), "--corpus", str(text_corpus(tmp_path / "c.txt")), "--word",
                     "Jehoshaphat", "-o", str(runs), *force], capsys, "is a file, not a folder", runs, model_dir)


# Item 16: a long output name keeps its temporaries within the file system's 255 bytes.
def test_a_245_character_output_name(model_dir, tmp_path, capsys):
    out = tmp_path / ("o" * 245)
    assert main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(out)]) == 0
    words = tmp_path / ("w" * 245)
    assert main(["mine", "--model", str(model_dir), "--corpus", str(text_corpus(tmp_path / "c.txt")), "--min-count",
                 "2", "-o", str(words)]) == 0
    assert (out / "config.json").is_file() and words.read_text() and no_temporaries(tmp_path)


# Item 17: ~user paths of users that do not exist.
@pytest.mark.parametrize("where", ["-o", "--model", "--corpus"])
def test_unknown_home_folders_are_one_line(model_dir, tmp_path, capsys, where):
    args = {"-o": str(tmp_path / "o"), "--model": str(model_dir), "--corpus": str(text_corpus(tmp_path / "c.txt"))}
    args[where] = "~nosuchuser-vocab-expand/x"
    run_refused(["expand", "--word", "Jehoshaphat", *[v for pair in args.items() for v in pair]], capsys,
                "give the path without ~user", model_dir)


# Item 19: LoRA target modules are checked against the model before RUNS/ is touched.
def test_lora_targets_that_match_nothing(model_dir, tmp_path, capsys):
    run_refused(["compare", "--model", str(model_dir), "--corpus", str(text_corpus(tmp_path / "c.txt", 300)), "--word",
                 "Jehoshaphat", "--strategies", "mean", "--train", "lora", "--lora-target-modules",
                 "nonexistent_proj", "-o", str(tmp_path / "runs")], capsys,
                "nonexistent_proj matches no module of this model; choose from", model_dir)
    assert not (tmp_path / "runs").exists()


# Item 20: one long document is read as windows, so it costs what many short ones cost.
def test_long_documents_are_read_in_windows(tmp_path):
    from vocab_expand.corpus import MAX_DOCUMENT_CHARS, load_corpus, windows

    assert list(windows("aa bb cc", 6)) == ["aa bb ", "cc"] and list(windows("abcdefgh", 3)) == ["abc", "def", "gh"]
    text = " ".join(f"word{i}" for i in range(60_000))
    corpus_file = tmp_path / "c.jsonl"
    corpus_file.write_text(json.dumps({"text": text}) + "\n")
    corpus = load_corpus(corpus_file)
    pieces = corpus.train + corpus.heldout
    assert len(pieces) > 1 and all(len(p) <= MAX_DOCUMENT_CHARS for p in pieces)
    assert sorted(pieces) == sorted(windows(text)) and "".join(windows(text)) == text
