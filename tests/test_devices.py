"""The pipeline off the plain float32 CPU path: bf16 and float16 models, a model dispatched by Accelerate over
the CPU and disk offload (its hooks move tensors between devices as on several GPUs), and, where one is at
hand, CUDA (`-m gpu`). A CPU-only run never initializes CUDA."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from helpers import TINY_TEXT, make_model

import vocab_expand as ve
from vocab_expand.corpus import Corpus

WORDS = ["Jehoshaphat", "prophets"]
TRAIN = [t for t in TINY_TEXT for _ in range(6)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(30)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=TRAIN[-6:] + TINY_TEXT[:2])
FAST = dict(sample_max_positions=3000, distill_epochs=2)


def bf16_exact(model: torch.nn.Module) -> torch.nn.Module:
    """The model with every weight rounded to bf16 (still float32): bf16 and float32 copies then differ only
    in how they compute, not in their weights."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def pipeline(model: torch.nn.Module, tokenizer, tmp_path) -> dict:
    """expand with distill/fit, diagnose (bits per character, generations), compare for 2 steps."""
    expansion = ve.expand(model, tokenizer, WORDS, corpus=CORPUS, **FAST)
    assert expansion.model.get_input_embeddings().weight.dtype == model.get_input_embeddings().weight.dtype
    diagnosis = ve.diagnose(model, tokenizer, WORDS, CORPUS, ["mean", "distill/fit"], progress=False,
                            max_new_tokens=3, **FAST)
    runs = ve.compare(model, CORPUS, WORDS, ["mean"], tmp_path / "runs", tokenizer=tokenizer, progress=False,
                      expand_options=FAST, steps=2, eval_every=1, batch_size=2, seq_len=16, eval_tokens=100,
                      warmup_steps=1)
    return {"diagnosis": diagnosis.figures, "compare": runs.evaluations["mean"]}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_the_float32_figures(dtype, tiny_tokenizer, tmp_path):
    reference = bf16_exact(make_model("untied", len(tiny_tokenizer)))
    half = copy.deepcopy(reference).to(dtype)
    low = pipeline(half, tiny_tokenizer, tmp_path / "half")
    high = pipeline(reference, tiny_tokenizer, tmp_path / "float32")
    # Statistics are reduced in float32; what differs is the model's own arithmetic in half precision.
    before = (low["diagnosis"]["bpc_before"], high["diagnosis"]["bpc_before"])
    assert before[0] == pytest.approx(before[1], rel=5e-3)
    for name in ("mean", "distill/fit"):
        a, b = low["diagnosis"]["strategies"][name], high["diagnosis"]["strategies"][name]
        assert a["bpc_after"] == pytest.approx(b["bpc_after"], rel=2e-2), name
    assert low["compare"][0]["bits_per_character"] == pytest.approx(high["compare"][0]["bits_per_character"],
                                                                     rel=5e-3)


def test_a_model_dispatched_over_cpu_and_disk_gives_the_same_rows(tiny_tokenizer, tmp_path):
    from accelerate import dispatch_model

    model = make_model("untied", len(tiny_tokenizer))
    reference = ve.expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **FAST)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(copy.deepcopy(model), device_map=device_map, offload_dir=str(tmp_path / "offload"))
    result = ve.expand(dispatched, tiny_tokenizer, WORDS, corpus=CORPUS, **FAST)
    n = len(tiny_tokenizer)
    torch.testing.assert_close(result.model.lm_head.weight[n:], reference.model.lm_head.weight[n:])
    diagnosis = ve.diagnose(dispatched, tiny_tokenizer, WORDS, CORPUS, ["mean", "distill/fit"], progress=False,
                            max_new_tokens=3, **FAST)
    plain = ve.diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["mean", "distill/fit"], progress=False,
                        generate=False, **FAST)
    assert diagnosis.figures["bpc_before"] == pytest.approx(plain.figures["bpc_before"], rel=1e-6)


def test_a_cpu_run_never_initializes_cuda():
    """Expanding, placing (auto) and the memory figures (peak, free memory, distill's cache budget)."""
    code = ("import sys, torch; sys.path.insert(0, 'tests'); from helpers import make_model, train_byte_level_bpe, wrap;"
            "import vocab_expand as ve; from vocab_expand.loading import resolve_device, resolve_dtype;"
            "from vocab_expand.memory import available_bytes;"
            "from vocab_expand.strategies.distill.maths import default_budget; tok = wrap(train_byte_level_bpe());"
            "r = ve.expand(make_model('tied', len(tok)), tok, ['Jehoshaphat']); d = resolve_device('auto');"
            "print(resolve_dtype('auto', d), default_budget(torch.device('cpu')) > 0,"
            " available_bytes(torch.device('cpu')) > 0, r.report['peak_memory']['rss_mb'] > 0);"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-2:] == ["torch.float32 True True True", "False"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_pipeline_on_cuda(dtype, tiny_tokenizer, tmp_path):
    model = make_model("untied", len(tiny_tokenizer)).to("cuda", dtype)
    figures = pipeline(model, tiny_tokenizer, tmp_path)
    cpu = pipeline(make_model("untied", len(tiny_tokenizer)).to(dtype), tiny_tokenizer, tmp_path / "cpu")
    assert figures["diagnosis"]["bpc_before"] == pytest.approx(cpu["diagnosis"]["bpc_before"], rel=1e-2)


# --- where the model is loaded: load_model's device, dtype and device_map, and the CLI flags -------------------

def test_auto_placement_is_float32_on_the_cpu_without_a_gpu():
    from vocab_expand.loading import resolve_device, resolve_dtype

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu", "mps", "banana"])
def test_a_device_torch_cannot_use_is_one_clear_error(device):
    from vocab_expand.loading import resolve_device

    if device.startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("this machine has the GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ve.InvalidInputError, match="device"):
        resolve_device(device)


def test_an_unknown_dtype_is_one_clear_error():
    from vocab_expand.loading import resolve_dtype

    with pytest.raises(ve.InvalidInputError, match="dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))


def test_load_model_in_bfloat16_keeps_it_through_expansion_and_save(model_dir, tmp_path):
    from safetensors import safe_open

    model, tokenizer = ve.load_model(model_dir, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    result = ve.expand(model, tokenizer, WORDS, corpus=CORPUS, **FAST)
    result.save(tmp_path / "out")
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    reloaded, _ = ve.load_model(tmp_path / "out", dtype="bfloat16")
    assert reloaded.get_input_embeddings().weight.shape[0] == len(tokenizer) + len(result.new_tokens)


@pytest.mark.parametrize("device_map", ["auto", "cpu+disk"])
def test_load_model_with_a_device_map_expands_like_the_plain_model(device_map, model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("VOCAB_EXPAND_CACHE", str(tmp_path / "cache"))  # the offload folder lives there
    plain, tokenizer = ve.load_model(model_dir)
    if device_map == "cpu+disk":  # one layer on disk, as for a model larger than its devices
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched, _ = ve.load_model(model_dir, device_map=device_map)
    if isinstance(device_map, dict):
        assert dispatched.hf_device_map["model.layers.1"] == "disk"
    a = ve.expand(plain, tokenizer, WORDS, corpus=CORPUS, **FAST)
    b = ve.expand(dispatched, tokenizer, WORDS, corpus=CORPUS, **FAST)
    n = len(tokenizer)
    torch.testing.assert_close(b.model.get_input_embeddings().weight[n:].cpu(),
                               a.model.get_input_embeddings().weight[n:])


def test_the_cli_loads_in_the_dtype_asked_and_refuses_a_missing_gpu_before_any_work(model_dir, tmp_path, capsys):
    from safetensors import safe_open

    from vocab_expand.cli import main

    out = tmp_path / "out"
    assert main(["expand", "--model", str(model_dir), "--word", "Jehoshaphat", "--dtype", "bfloat16",
                 "-o", str(out)]) == 0, capsys.readouterr().err
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    if torch.cuda.is_available():
        return
    for command in (["expand", "--word", "Jehoshaphat"], ["diagnose", "--word", "Jehoshaphat"],
                    ["compare", "--word", "Jehoshaphat"], ["demo"]):
        target = tmp_path / f"refused-{command[0]}"
        capsys.readouterr()
        assert main([*command, "--model", str(model_dir), "--device", "cuda", "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no CUDA GPU" in err, err
        assert not target.exists()


def test_batches_grow_to_fill_a_gpu_and_stay_bounded_on_the_cpu(monkeypatch):
    import vocab_expand.memory as memory
    from vocab_expand.forward import LOGIT_BUDGET, LOGIT_BUDGET_MAX, logit_budget

    assert logit_budget(torch.device("cpu")) == LOGIT_BUDGET
    for free, expected in ((80 * 2**30, LOGIT_BUDGET_MAX), (6 * 2**30, 6 * 2**30 // 48), (2**20, LOGIT_BUDGET)):
        monkeypatch.setattr(memory, "available_bytes", lambda device, free=free: free)
        assert logit_budget(torch.device("cuda")) == expected
