"""Hostile input: every case asserts its one-line message, its exit status, and that nothing the user had was
changed or deleted (checksums of the input model folder and of any existing output, before and after).

Cases run the CLI in-process (cli.main) on a tiny locally built model, so the suite needs no network and
takes seconds. Bugs must keep their traceback: only the project's own errors become one line.
"""

from __future__ import annotations

import errno
import re
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

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
    (["expand", "--fit-max-positions", "1"], "fit_max_positions must be an integer >= 1024"),
    (["expand", "--fit-max-positions", "100"], "fit_max_positions must be an integer >= 1024"),
    (["expand", "--distill-epochs", "-1"], "distill_epochs must be an integer >= 0"),
    (["expand", "--pad-to-multiple-of", "0"], "pad_to_multiple_of must be positive"),
    (["expand", "--fit-reg", "-1"], "fit_reg must be >= 0"),
    (["expand", "--cov-scale", "-1"], "cov_scale must be >= 0"),
    (["compare", "--checkpoint-every", "0"], "checkpoint_every must be a positive integer"),
    (["compare", "--warmup-steps", "-5"], "warmup_steps must be an integer >= 0"),
    (["compare", "--steps", "0"], "steps must be a positive integer"),
    (["compare", "--max-time", "-1"], "max_time_s must be >= 0"),
    (["demo", "--top", "0"], "top_k must be an integer >= 1"),
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
    result = ve.expand(model, tiny_tokenizer, ["Jehoshaphat"], corpus=str(corpus), fit_max_positions=1024,
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
                 "--corpus", str(corpus), "--fit-max-positions", "2048", "--distill-epochs", "1",
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
