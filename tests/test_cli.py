"""The command line: expand writes a loadable model folder atomically; errors are one clear line, exit 2."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab_expand import DEFAULTS, STRATEGIES
from vocab_expand.cli import build_parser, main



def test_expand_writes_a_plain_transformers_folder(model_dir, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("# comment\nJehoshaphat\nprophets\n\nthe\n", encoding="utf-8")
    out = tmp_path / "out"
    code = main(["expand", "--model", str(model_dir), "--words", str(words), "--word", "Nebuchadnezzar",
                 "--input-init", "subword", "--output-init", "mean", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "added 3 tokens" in printed and "skipped 'the'" in printed
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.tokenize(" Jehoshaphat") == ["ĠJehoshaphat"]
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    report = json.loads((out / "expansion.json").read_text())
    assert report["tokens_added"] == 3 and report["config"]["input_init"] == "subword"
    ids = tok("Jehoshaphat said", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 3


def test_expand_with_a_corpus_keeps_a_tied_model_tied_and_reports_parameters(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"And Jehoshaphat said unto the prophets, {i} times." for i in range(200)), encoding="utf-8")
    common = ["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--word", "prophets",
              "--corpus", str(corpus), "--sample-max-positions", "3000", "--distill-epochs", "1"]
    out = tmp_path / "out"
    assert main([*common, "-o", str(out)]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    assert "joint input rows, joint output rows" in lines[0]
    report = json.loads((out / "expansion.json").read_text())
    assert (report["config"]["input_init"], report["config"]["output_init"], report["tied"]) == ("distill", "fit", True)
    d = report["parameters_added"] // 2
    assert report["parameters_after"] - report["parameters_before"] == 2 * d  # k = 2 new rows of d, shared
    assert lines[-1].endswith(f"parameters {report['parameters_before']:,} -> {report['parameters_after']:,} "
                              f"(+{2 * d:,}, tied)")
    assert report["data_driven"]["joint"]["positions"] <= 3 * 3000 and report["corpus"] == str(corpus)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    untied = tmp_path / "untied"
    assert main([*common, "--tie-policy", "untie", "-o", str(untied)]) == 0, capsys.readouterr().err
    assert "distill input rows, fit output rows" in capsys.readouterr().out
    report = json.loads((untied / "expansion.json").read_text())
    assert not report["tied"] and report["parameters_added"] > report["parameters_before"] // 10  # a whole head copy
    model = AutoModelForCausalLM.from_pretrained(untied)
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--output-init", "fit",
                 "-o", str(tmp_path / "o2")]) == 2
    assert "corpus" in capsys.readouterr().err


def test_existing_output_needs_force(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "-o", str(out)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    assert main(args + ["--force"]) == 0
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folders left


def test_errors_are_clear_and_leave_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["expand", "--model", str(model_dir), "-o", str(out)]) == 2
    assert "no words given" in capsys.readouterr().err
    assert main(["expand", "--model", str(tmp_path / "nowhere"), "--word", "x", "-o", str(out)]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert main(["expand", "--model", str(model_dir), "--words", str(tmp_path / "none.txt"), "-o", str(out)]) == 2
    assert "no words file" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["expand", "--model", str(model_dir), "--word", "x", "--input-init", "nope", "-o", str(out)])


def test_cli_defaults_and_choices_come_from_the_library():
    args = build_parser().parse_args(["expand", "--word", "x", "-o", "o"])
    assert (args.input_init, args.output_init, args.seed, args.tie_policy) == (
        DEFAULTS.input_init, DEFAULTS.output_init, DEFAULTS.seed, DEFAULTS.tie_policy)
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["expand"]._actions
                  if a.dest == "input_init")
    assert sorted(action.choices) == sorted([*STRATEGIES, "auto"])


def test_mine_writes_words_file(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["And Jehoshaphat said unto the prophets of Jehoshaphat"] * 40), encoding="utf-8")
    out = tmp_path / "words.txt"
    assert main(["mine", "--model", str(model_dir), "--corpus", str(corpus), "--top", "3", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[0] == "Jehoshaphat" and len(lines) <= 3
    assert "held-out split" in capsys.readouterr().out
    assert main(["mine", "--model", str(model_dir), "--corpus", str(corpus), "-o", str(out)]) == 2


def test_diagnose_writes_report(model_dir, tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    import json as _json

    corpus.write_text("".join(_json.dumps({"text": f"And Jehoshaphat said unto the prophets {i}"}) + "\n"
                              for i in range(60)), encoding="utf-8")
    out = tmp_path / "report"
    code = main(["diagnose", "--model", str(model_dir), "--corpus", str(corpus), "--word", "Jehoshaphat",
                 "--strategies", "zeros,subword/mean", "--no-generate", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "subword/mean" in printed and "report:" in printed
    for name in ("report.md", "diagnosis.json", "kl_histograms.png", "log_z.png", "bits_per_character.png"):
        assert (out / name).is_file(), name
    figures = json.loads((out / "diagnosis.json").read_text())
    assert set(figures["strategies"]) == {"zeros", "subword/mean"}
    assert main(["diagnose", "--model", str(model_dir), "--corpus", str(corpus), "--word", "Jehoshaphat",
                 "--strategies", "zeros,nope", "-o", str(tmp_path / "r2")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
