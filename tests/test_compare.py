"""compare: the RUNS/ layout and figures, identical data order, resuming after a kill, two CPU processes under
accelerate launch, training modes, and the errors users meet. Tiny models built locally."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_model

from vocab_expand.experiments import collect, compare
from vocab_expand.training import RunFolder, TrainConfig, data_order, pack

WORDS = ["Jehoshaphat", "prophets"]
FAST = dict(steps=6, eval_every=2, batch_size=4, seq_len=16, eval_tokens=200, learning_rate=1e-3, warmup_steps=2)
STRATEGIES = "hf_default,zeros,mean"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    """A tiny model folder and a corpus folder with both splits."""
    root = tmp_path_factory.mktemp("compare")
    for layout, folder in (("untied", "model"), ("tied", "tied_model")):
        make_model(layout, len(tiny_tokenizer)).save_pretrained(root / folder)
        tiny_tokenizer.save_pretrained(root / folder)
    lines = [f"And Jehoshaphat said unto the prophets of Israel, {i} times, go up." for i in range(300)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines), encoding="utf-8")
    return root


def cli(setup: Path, out: Path, *extra: str, env: dict | None = None, launcher: list[str] | None = None):
    args = ["compare", "--model", str(setup / "model"), "--corpus", str(setup / "corpus.jsonl"), "--word", WORDS[0],
            "--word", WORDS[1], "--strategies", STRATEGIES, "--steps", "6", "--eval-every", "2", "--batch-size", "4",
            "--seq-len", "16", "--eval-tokens", "200", "--lr", "1e-3", "--warmup-steps", "2", "-o", str(out), *extra]
    command = (launcher or [sys.executable, "-m"]) + ["vocab_expand.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600)


def metrics(out: Path, strategy: str) -> list[dict]:
    return RunFolder(out / strategy).records()


def test_runs_folder_figures_and_steps_to_target(setup, tmp_path):
    out = tmp_path / "runs"
    result = compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, STRATEGIES, out, progress=False, **FAST)
    for name in ("run.json", "comparison.json", "report.md", "bits_per_character.png", "train_loss.png"):
        assert (out / name).is_file(), name
    for name in ("hf_default", "zeros", "mean"):
        records = metrics(out, name)
        assert [r["step"] for r in records if "bits_per_character" in r] == [0, 2, 4, 6]
        assert all(0.0 <= r["adoption"] <= 1.0 for r in records if "bits_per_character" in r)
        assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
        assert json.loads((out / name / "config.json").read_text())["expansion"]["output_strategy"] == name
    assert result.reference == "hf_default"
    assert result.target_bpc == result.evaluations["hf_default"][-1]["bits_per_character"]
    assert result.steps_to_target["hf_default"] <= 6
    # Step 0 differs by strategy, every later number comes from the same data: mean and hf_default start apart.
    starts = {n: result.evaluations[n][0]["bits_per_character"] for n in result.evaluations}
    assert len(set(starts.values())) == 3
    assert "| mean |" in (out / "report.md").read_text()
    # A rerun of the same request finds every strategy finished and changes nothing.
    again = compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, STRATEGIES, out, progress=False, **FAST)
    assert again.evaluations == result.evaluations


def test_steps_to_target_counts_the_first_evaluation_at_or_below_the_target(tmp_path):
    from vocab_expand.diagnostics import parse_strategies

    pairs = parse_strategies("hf_default,mean")
    for name, values in (("hf_default", [3.0, 2.0, 1.5]), ("mean", [2.0, 1.5, 1.2])):
        (tmp_path / name).mkdir()
        lines = [{"step": 10 * i, "bits_per_character": v, "token_perplexity": 1.0, "new_token_probability": 0.0}
                 for i, v in enumerate(values)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    found = collect(tmp_path, pairs, "x", {}, {})
    assert found.target_bpc == 1.5 and found.steps_to_target == {"hf_default": 20, "mean": 10}


def test_killed_run_resumes_to_the_same_numbers(setup, tmp_path):
    straight = tmp_path / "straight"
    assert cli(setup, straight, "--checkpoint-every", "2").returncode == 0
    resumed = tmp_path / "resumed"
    killed = cli(setup, resumed, "--checkpoint-every", "2", env={"VOCAB_EXPAND_CRASH_AFTER_STEP": "3"})
    assert killed.returncode == 137
    assert json.loads((resumed / "hf_default" / "state.json").read_text()) == {"step": 2, "finished": False}
    done = cli(setup, resumed, "--checkpoint-every", "2")
    assert done.returncode == 0, done.stderr
    for name in ("hf_default", "zeros", "mean"):
        a, b = metrics(straight, name), metrics(resumed, name)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b):
            for key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (name, x["step"], key)


@pytest.mark.parametrize("folder", ["model", "tied_model"])
def test_max_time_stops_after_a_checkpoint_and_the_next_run_resumes(setup, tmp_path, folder):
    """Also on a tied model, whose shared matrix Accelerate saves once."""
    def run(out, **extra):
        return compare(str(setup / folder), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False,
                       **FAST, **extra)

    first = run(tmp_path / "runs", max_time_s=0.0)  # out of time after every step
    assert first.status["mean"] == "stopped (max_time_s)" and first.evaluations["mean"][-1]["step"] < 6
    for attempt in range(10):
        last = run(tmp_path / "runs", max_time_s=0.0)
        if last.status["mean"] == "finished":
            break
    straight = run(tmp_path / "straight")
    assert [r["step"] for r in last.evaluations["mean"]] == [0, 2, 4, 6]
    for x, y in zip(last.evaluations["mean"], straight.evaluations["mean"]):
        assert x["bits_per_character"] == pytest.approx(y["bits_per_character"], rel=1e-5)


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(setup, tmp_path):
    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.fail("accelerate's launcher is missing; it is a dependency of vocab-expand")
    single = tmp_path / "single"
    assert cli(setup, single).returncode == 0
    double = tmp_path / "double"
    # Accelerate's --cpu launcher starts one process; --multi_gpu starts torch.distributed.run, and without a GPU
    # vocab-expand's Accelerator(cpu=True) then joins the processes with gloo.
    done = cli(setup, double, launcher=[launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((double / "comparison.json").read_text())["processes"] == 2
    assert json.loads((single / "comparison.json").read_text())["processes"] == 1
    for name in ("hf_default", "zeros", "mean"):
        a = [r for r in metrics(single, name) if "bits_per_character" in r]
        b = [r for r in metrics(double, name) if "bits_per_character" in r]
        assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 2, 4, 6]
        for x, y in zip(a, b):  # the same global batches, summed in another order
            assert x["bits_per_character"] == pytest.approx(y["bits_per_character"], rel=1e-3)


@pytest.mark.parametrize("mode", ["new_rows", "embeddings"])
def test_training_modes_touch_only_what_they_train(setup, tmp_path, mode, tiny_tokenizer):
    out = tmp_path / "runs"
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, train=mode,
            save_final=True, **FAST)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(setup / "model")
    after = AutoModelForCausalLM.from_pretrained(out / "mean" / "final")
    n = len(tiny_tokenizer)
    for name, old in before.state_dict().items():
        new = after.state_dict()[name]
        is_embedding = "embed_tokens" in name or "lm_head" in name
        if is_embedding:
            assert torch.equal(new[:n], old) == (mode == "new_rows"), name
            assert not torch.allclose(new[n:], old.mean(0).expand_as(new[n:]), atol=1e-4), name  # new rows trained
        else:
            assert torch.equal(new, old), name


def test_clear_errors(setup, tmp_path):
    with pytest.raises(ValueError, match="use fewer steps"):
        data_order(10, TrainConfig(steps=6, batch_size=4))
    assert torch.equal(data_order(100, TrainConfig(steps=6, batch_size=4)), data_order(100, TrainConfig(steps=6, batch_size=4)))
    assert pack([[1, 2, 3], [4]], 3, 0).tolist() == [[1, 2, 3], [0, 4, 0]]
    with pytest.raises(ValueError, match="multiple of gradient_accumulation"):
        TrainConfig(batch_size=5, gradient_accumulation=2)
    out = tmp_path / "runs"
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, **FAST)
    with pytest.raises(FileExistsError, match="different compare run"):
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "zeros", out, progress=False, **FAST)
    with pytest.raises(ValueError, match="use fewer steps"):
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", tmp_path / "r2", progress=False,
                **{**FAST, "steps": 5000})


def test_gradient_clipping_bounds_each_update(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(setup / "model").state_dict()["model.layers.0.mlp.up_proj.weight"]
    moved = {}
    for clip in (1e-9, None):
        out = tmp_path / str(clip)
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, save_final=True,
                max_grad_norm=clip, **{**FAST, "learning_rate": 1e-6})
        after = AutoModelForCausalLM.from_pretrained(out / "mean" / "final").state_dict()["model.layers.0.mlp.up_proj.weight"]
        moved[clip] = (after - before).abs().max().item()
    # Adam divides by sqrt(v) + 1e-8: gradients clipped to a norm of 1e-9 fall far below that epsilon, so the
    # weights barely move, while unclipped ones move by about lr per step.
    assert moved[None] > 1e-6
    assert moved[1e-9] < 1e-3 * moved[None]


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (what overflow does to a real run)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


def test_an_update_with_an_infinite_gradient_is_skipped_not_applied(setup, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    original, calls = LlamaForCausalLM.forward, []

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                out.loss = _InfiniteGradient.apply(out.loss)
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    out = tmp_path / "runs"
    result = compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, **FAST)
    steps = [r for r in metrics(out, "mean") if "train_loss" in r]
    assert [r.get("skipped", False) for r in steps] == [False, False, True, False, False, False]
    assert not math.isfinite(steps[2]["grad_norm"]) and all(math.isfinite(r["grad_norm"]) for r in steps if r is not steps[2])
    assert all(math.isfinite(r["train_loss"]) for r in steps)  # the weights never became nan
    assert all(math.isfinite(r["bits_per_character"]) for r in result.evaluations["mean"])
    assert result.summary()["mean"]["skipped_steps"] == [3]
    assert "| 1 |" in (out / "report.md").read_text()


def test_force_validates_first_and_deletes_only_the_run(setup, tmp_path):
    """Issue 16, item 1: a --force rerun that fails validation deletes nothing; force removes only what a run wrote."""
    out = tmp_path / "runs"
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, **FAST)
    (out / "notes.txt").write_text("the user's own notes")
    finished = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="use fewer steps"):
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "zeros", out, progress=False, force=True,
                **{**FAST, "steps": 5000})
    assert sorted(p.name for p in out.iterdir()) == finished and (out / "mean" / "state.json").is_file()
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "zeros", out, progress=False, force=True, **FAST)
    assert (out / "notes.txt").read_text() == "the user's own notes"
    assert not (out / "mean").exists() and (out / "zeros" / "state.json").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    with pytest.raises(FileExistsError, match="not a compare run folder"):
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "zeros", other, progress=False, force=True,
                **FAST)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_refused_request_leaves_no_run_json(setup, tmp_path):
    """Issue 16, item 11: text too short for the steps leaves nothing behind, so the corrected rerun just runs."""
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match="use fewer steps"):
        compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False,
                **{**FAST, "steps": 5000})
    assert not out.exists()
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, **FAST)


def test_resume_before_the_first_checkpoint_keeps_one_step_0_evaluation(setup, tmp_path):
    """Issue 16, item 11: a run killed before its first checkpoint had logged step 0; the rerun logs it once."""
    out = tmp_path / "runs"
    for _ in range(3):  # killed three times after step 1, before the checkpoint at step 2
        result = cli(setup, out, "--strategies", "mean", env={"VOCAB_EXPAND_CRASH_AFTER_STEP": "1"})
        assert result.returncode == 137, result.stderr
    assert cli(setup, out, "--strategies", "mean").returncode == 0
    steps = [r["step"] for r in metrics(out, "mean") if "bits_per_character" in r]
    assert steps == [0, 2, 4, 6]


def test_new_rows_training_never_decays_old_rows(setup, tmp_path, tiny_tokenizer):
    """Issue 16, item 11: AdamW's decoupled weight decay must not shrink the frozen rows."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "runs"
    compare(str(setup / "model"), str(setup / "corpus.jsonl"), WORDS, "mean", out, progress=False, train="new_rows",
            weight_decay=0.5, save_final=True, **FAST)
    before = AutoModelForCausalLM.from_pretrained(setup / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "mean" / "final").state_dict()
    n = len(tiny_tokenizer)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after[name][:n], before[name]), name


@pytest.mark.parametrize("option, value", [("checkpoint_every", 0), ("warmup_steps", -5), ("weight_decay", -0.1),
                                           ("max_grad_norm", 0.0), ("max_time_s", -1.0)])
def test_numeric_training_options_are_validated(option, value):
    """Issue 16, item 8: no silent replacement by a default."""
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: value})


LORA = ("--strategies", "mean", "--train", "lora", "--lora-r", "2", "--lora-target-modules", "q_proj,v_proj",
        "--lr-new-rows", "1e-2", "--checkpoint-every", "2")


@pytest.mark.parametrize("folder", ["model", "tied_model"])
def test_lora_training_runs_and_resumes_to_the_same_numbers(setup, tmp_path, folder):
    def run(out, env=None):
        args = ["compare", "--model", str(setup / folder), "--corpus", str(setup / "corpus.jsonl"), "--word", WORDS[0],
                "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--seq-len", "16", "--eval-tokens", "200",
                "--lr", "1e-3", "--warmup-steps", "1", "-o", str(out), "--save-final", *LORA]
        return subprocess.run([sys.executable, "-m", "vocab_expand.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=600)

    assert run(tmp_path / "straight").returncode == 0
    assert run(tmp_path / "resumed", {"VOCAB_EXPAND_CRASH_AFTER_STEP": "3"}).returncode == 137
    done = run(tmp_path / "resumed")
    assert done.returncode == 0, done.stderr
    a, b = metrics(tmp_path / "straight", "mean"), metrics(tmp_path / "resumed", "mean")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) == 7  # 3 evaluations, 4 steps
    for x, y in zip(a, b):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)
    assert a[-1]["bits_per_character"] != a[0]["bits_per_character"]
    config = json.loads((tmp_path / "straight" / "mean" / "config.json").read_text())
    assert config["rates"] == {"body": None, "lora_adapters": 1e-3, "old_rows": None, "new_rows": 1e-2}
    # The final model is merged: a plain transformers folder whose new rows trained.
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "mean" / "final")
    assert not any("lora" in name for name, _ in final.named_parameters())
    assert "Peak learning rates: body frozen, lora adapters 0.001" in (tmp_path / "straight" / "report.md").read_text()


def test_the_new_rows_rate_reaches_the_optimizer(tiny_tokenizer):
    """LoRA: the new rows' deltas are their own parameter group. Other modes: one step moves the new rows by
    exactly lr_new_rows / learning_rate times what a shared rate moves them, and the old rows as before."""
    from vocab_expand.training.optim import prepare

    n = len(tiny_tokenizer)
    lora = prepare(make_model("untied", n + 2), TrainConfig(train="lora", lora_r=2, learning_rate=1e-3,
                                                            lr_new_rows=5e-2), n, n + 2)
    rates = sorted((g["lr"], sum(p.numel() for p in g["params"])) for g in lora.optimizer.param_groups)
    assert rates[1] == (5e-2, 2 * 2 * 16)  # two matrices, two new rows of d = 16
    assert rates[0][0] == 1e-3

    def one_step(lr_new: float | None, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        model = make_model("untied", n + 2)
        before = model.lm_head.weight.detach().clone()
        trainable = prepare(model, TrainConfig(train=mode, learning_rate=1e-3, lr_new_rows=lr_new), n, n + 2)
        ids = torch.tensor([[5, 6, n, 7, n + 1, 8]])
        model(input_ids=ids, labels=ids).loss.backward()
        trainable.update(1e-3)
        return (model.lm_head.weight.detach() - before)[n:], (model.lm_head.weight.detach() - before)[:n]

    for mode in ("full", "embeddings", "new_rows"):
        shared_new, shared_old = one_step(None, mode)
        fast_new, fast_old = one_step(1e-2, mode)
        torch.testing.assert_close(fast_new, 10 * shared_new)
        torch.testing.assert_close(fast_old, shared_old)
        assert shared_new.abs().sum() > 0


def test_adoption_counts_by_hand():
    """Where the target is a new token: does its logit beat the word's old first piece's?"""
    from vocab_expand.training.evaluation import _adoption_counts

    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0], [0.0, 1.0, 3.0, 0.5], [9.0, 0.0, 0.0, 0.0]]])  # vocabulary 4
    targets = torch.tensor([[2, 3, 0]])  # new ids 2 (first piece 1) and 3 (first piece 0), then an old token
    occurrences, wins = _adoption_counts(logits, targets, torch.ones(1, 3, dtype=torch.bool), 2, torch.tensor([1, 0]))
    assert (occurrences.item(), wins.item()) == (2, 1)  # 1.0 < 5.0 loses; 0.5 > 0.0 wins
