"""Memory that stays bounded: distillation keeps prefix caches only within its budget (and gives the same rows
with none kept), diagnose never copies the model and leaves it as it was, and both report their peak memory."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from helpers import TINY_TEXT, make_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from vocab_expand import Corpus, apply_plan, expand, plan_tokens
from vocab_expand.diagnostics import _Runner, diagnose
from vocab_expand.config import ExpandConfig
from vocab_expand.generation import generations
from vocab_expand.learning.windows import windows_in
from vocab_expand.memory import peak_memory, tensor_bytes
from vocab_expand.pairs import StrategyPair
from vocab_expand.rows.compute import new_rows
from vocab_expand.strategies.distill.maths import Distiller, cache_bytes, distill_rows
from vocab_expand.rows.grow import grown_for

WORDS = ["Jehoshaphat", "prophets"]
TRAIN = [t for t in TINY_TEXT for _ in range(12)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(40)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=[t for t in TINY_TEXT if "Jehoshaphat" in t or "prophets" in t])
FAST = dict(sample_max_positions=4000, distill_epochs=2, calibration_fraction=0.25)


def hybrid_gemma(n: int) -> Gemma3ForCausalLM:
    """A tiny Gemma 3 with a sliding-window layer (window 4, shorter than most prefixes) and a full one."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                              pad_token_id=1, eos_token_id=0, bos_token_id=0)
    return Gemma3ForCausalLM(config).eval()


def tiny_model(kind: str, n: int) -> torch.nn.Module:
    return hybrid_gemma(n) if kind == "gemma3" else make_model("untied", n)


def synthetic_windows(n: int, k: int = 3, chunks: int = 120) -> list:
    """Occurrence windows of k new tokens in seeded random text: prefixes of 1 to 9 tokens; 80 fitting and 40
    calibration windows, 5 batches."""
    g = torch.Generator().manual_seed(0)
    pieces = [[40 + 2 * j, 41 + 2 * j] for j in range(k)]
    windows = []
    for c in range(chunks):
        chunk = torch.randint(5, 300, (12,), generator=g).tolist()
        at = int(torch.randint(0, 10, (1,), generator=g))
        chunk[at] = n + c % k
        windows += windows_in(chunk, pieces, n, 0, context=8, after=2, calibration=c % 3 == 0)
    return windows


def no_deepcopy_of(kinds: tuple[type, ...], monkeypatch) -> None:
    """copy.deepcopy raises for objects of ``kinds`` (e.g. a model, or a key/value cache)."""
    real = copy.deepcopy

    def guarded(obj, *args, **kwargs):
        if isinstance(obj, kinds):
            raise AssertionError(f"deepcopy of a {type(obj).__name__}")
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", guarded)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_distilled_rows_are_the_same_whatever_the_cache_budget(kind, tiny_tokenizer, monkeypatch):
    """Reading every prefix again (budget 0), keeping one batch's cache, or all of them: the same rows, bit for
    bit; and no cache is ever deep-copied."""
    from transformers.cache_utils import Cache

    no_deepcopy_of((Cache,), monkeypatch)
    n = len(tiny_tokenizer)
    model, windows = tiny_model(kind, n), synthetic_windows(n)
    probe = Distiller(model, windows, n, cache_budget=0)
    # the first, shortest batch of 32 windows: its cache and its teacher states
    one_batch = cache_bytes(probe._read_prefix(probe.batches[0])) + tensor_bytes(probe.targets[0])
    start = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)) * 0.02
    runs = {budget: distill_rows(model, windows, start, n, free=torch.ones(3, dtype=torch.bool), epochs=2, seed=0,
                                 progress=False, cache_budget=budget) for budget in (0, one_batch, 2**40)}
    facts = {b: r.report["prefix_caches"] for b, r in runs.items()}
    assert facts[0]["kept_prefix_caches"] == 0 and facts[0]["kept_cache_mb"] == 0
    assert facts[one_batch]["kept_prefix_caches"] == 1
    assert facts[2**40]["kept_prefix_caches"] == facts[2**40]["batches"] == 5
    # teacher states beyond the budget are kept on the CPU (here the device is the CPU: only the accounting shows)
    assert [facts[b]["teacher_states_on_cpu"] for b in (0, one_batch, 2**40)] == [5, 4, 0]
    for budget in (one_batch, 2**40):
        assert torch.equal(runs[budget].rows, runs[0].rows), budget
        assert runs[budget].report["history"] == runs[0].report["history"]
    errors = [h["training_error"] for h in runs[0].report["history"][1:]]
    assert len(errors) == 2 and errors[0] != errors[1]  # it did take steps, the same in every run


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_kept_cache_is_never_written_and_none_is_kept_with_budget_0(kind, tiny_tokenizer, monkeypatch):
    from transformers.cache_utils import Cache

    no_deepcopy_of((Cache,), monkeypatch)
    n = len(tiny_tokenizer)
    model, windows = tiny_model(kind, n), synthetic_windows(n)
    rows = torch.randn(3, 16, generator=torch.Generator().manual_seed(2)) * 0.02
    kept = Distiller(model, windows, n, cache_budget=2**40)
    assert all(b.cache is not None for b in kept.batches)
    stored = [[(layer.keys.clone(), layer.values.clone(), getattr(layer, "cumulative_length", None))
               for layer in b.cache.layers] for b in kept.batches]
    losses = [kept.loss(rows, i) for i in range(len(kept.batches))]
    torch.stack(losses).sum().backward()
    for batch, before in zip(kept.batches, stored):
        for layer, (keys, values, length) in zip(batch.cache.layers, before):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
            assert getattr(layer, "cumulative_length", None) == length
    recomputing = Distiller(model, windows, n, cache_budget=0)
    for i, batch in enumerate(recomputing.batches):
        assert torch.equal(recomputing.loss(rows, i), losses[i].detach())
        assert batch.cache is None  # read for the pass, freed after it
    assert recomputing.kept_bytes == 0


def test_student_only_distillers_read_no_teacher_and_give_the_same_states(tiny_tokenizer):
    """joint's calibration score (teacher=False) keeps prefix caches but no teacher states; its input gradient
    (read_ahead=False too) keeps nothing; both read the same student states as distill's Distiller."""
    n = len(tiny_tokenizer)
    model, windows = tiny_model("llama", n), synthetic_windows(n)
    rows = torch.randn(3, 16, generator=torch.Generator().manual_seed(3)) * 0.02
    full = Distiller(model, windows, n, cache_budget=2**40)
    scoring = Distiller(model, windows, n, cache_budget=2**40, teacher=False)
    once = Distiller(model, windows, n, cache_budget=2**40, teacher=False, read_ahead=False)
    assert all(full.targets) and not any(scoring.targets) and not any(once.targets)
    assert all(b.cache is not None for b in scoring.batches) and not any(b.cache is not None for b in once.batches)
    assert scoring.kept_bytes == sum(cache_bytes(b.cache) for b in scoring.batches) < full.kept_bytes
    assert once.kept_bytes == 0
    with torch.no_grad():
        for i in range(len(full.batches)):
            want = full.final_states(rows, i)
            assert torch.equal(scoring.final_states(rows, i), want) and torch.equal(once.final_states(rows, i), want)


def test_joint_and_distill_give_the_same_rows_with_budget_0(tiny_tokenizer):
    """`joint` (a tied model) distils and scores calibration windows through Distiller; both keep working when
    no cache is kept, with the same bytes."""
    model = make_model("tied", len(tiny_tokenizer))
    runs = [expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, distill_cache_budget=budget, **FAST)
            for budget in (0, None)]
    assert runs[0].report["input_strategy"] == "joint"
    assert runs[0].report["config"]["distill_cache_budget"] == 0
    distilled = runs[0].report["data_driven"]["joint"]["distill"]["prefix_caches"]
    assert distilled["kept_prefix_caches"] == 0 < distilled["batches"]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_cache_budget_is_checked():
    with pytest.raises(ValueError, match="distill_cache_budget must be an integer >= 0"):
        ExpandConfig(distill_cache_budget=-1)
    assert ExpandConfig(distill_cache_budget=4e9).distill_cache_budget == 4_000_000_000  # the CLI parses 4e9 so


def _parameters(model: torch.nn.Module) -> dict[str, object]:
    return {name: p for name, p in model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("raises", [False, True])
def test_grown_for_restores_the_model_exactly(tiny, raises):
    """Every layout (tied, untied, bias, padded: spare rows written in place), untied or not, padded to 64 or
    not: afterwards the same Parameter objects and values, row counts, config and tie, also when the block raises."""
    layout, model, tokenizer = tiny
    for policy, pad in [("auto", None), ("untie", None), ("auto", 64), ("untie", 64)]:
        config = ExpandConfig(input_init="subword", output_init="random", tie_policy=policy, pad_to_multiple_of=pad)
        plan = plan_tokens(tokenizer, WORDS, config)
        rows = new_rows(model, plan, config)
        before, state = _parameters(model), {k: v.clone() for k, v in model.state_dict().items()}
        text = model.config.get_text_config()
        sizes = (text.vocab_size, text.tie_word_embeddings, model.get_output_embeddings().out_features)
        with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
            with grown_for(model, plan.tokens_before, rows, config) as figures:
                assert model.get_input_embeddings().weight.shape[0] == figures.rows_after > 0
                assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == rows.tied
                if raises:
                    raise RuntimeError("inside the block")
        after = _parameters(model)
        assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert (text.vocab_size, text.tie_word_embeddings, model.get_output_embeddings().out_features) == sizes
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == (layout in ("tied", "padded"))


@pytest.mark.parametrize("layout", ["tied", "untied"])
def test_diagnose_never_copies_the_model_and_leaves_it_as_it_was(layout, tiny_tokenizer, monkeypatch):
    model = make_model(layout, len(tiny_tokenizer))
    before, state = _parameters(model), {k: v.clone() for k, v in model.state_dict().items()}
    pairs = ["subword/mean", "mean", "random"]
    no_deepcopy_of((torch.nn.Module,), monkeypatch)
    diagnosis = diagnose(model, tiny_tokenizer, WORDS, CORPUS, pairs, progress=False, max_new_tokens=6)
    monkeypatch.undo()
    after = _parameters(model)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == (layout == "tied")
    assert model.config.vocab_size == len(tiny_tokenizer)
    prompts = [p["prompt"] for p in diagnosis.figures["generations_before"]]
    for spec in pairs:  # the generations of a copy grown by apply_plan, as diagnose made them before
        pair = StrategyPair.parse(spec)
        config = ExpandConfig(input_init=pair.input, output_init=pair.output)
        plan = plan_tokens(tiny_tokenizer, WORDS, config)
        copy_ = apply_plan(model, plan, config)
        expected = generations(copy_.model, copy_.tokenizer, prompts, 6, 0, new_ids=set(copy_.new_token_ids))
        assert diagnosis.strategies[pair.name]["generations"] == expected, spec


def test_a_pass_is_dropped_once_no_later_strategy_reads_its_input_rows(tiny_tokenizer, monkeypatch):
    model = make_model("untied", len(tiny_tokenizer))
    pairs = ["subword/mean", "subword/zeros", "mean", "random/mean", "subword/random"]
    left: list[set[str]] = []
    drop = _Runner.drop_passes

    def recording(self, keep_for):
        drop(self, keep_for)
        left.append(set(self.input_passes))

    monkeypatch.setattr(_Runner, "drop_passes", recording)
    diagnosis = diagnose(model, tiny_tokenizer, WORDS, CORPUS, pairs, progress=False, generate=False)
    assert left == [{"subword"}, {"subword"}, {"subword"}, {"subword"}, set()]
    alone = diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["subword/random"], progress=False, generate=False)
    assert diagnosis.strategies["subword/random"]["bpc_after"] == alone.strategies["subword/random"]["bpc_after"]


def test_peak_memory_is_reported_and_nested_measurements_see_the_inner_peak(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    expansion = expand(model, tiny_tokenizer, WORDS)
    diagnosis = diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["mean"], progress=False, generate=False)
    for peak in (expansion.report["peak_memory"], diagnosis.figures["peak_memory"]):
        assert peak["rss_mb"] > 0 and peak["rss_scope"] in ("call", "process")
        assert ("cuda_mb" in peak) == torch.cuda.is_initialized()
    import mmap

    from vocab_expand.memory import MB, _proc_bytes

    with peak_memory() as outer:
        before = _proc_bytes("/proc/self/status", "VmRSS:")
        with peak_memory() as inner:
            # 64 MB of fresh pages, all touched: a torch tensor could reuse memory the allocator still holds
            held = mmap.mmap(-1, 64 * MB)
            for page in range(0, 64 * MB, mmap.PAGESIZE):
                held[page] = 1
        held.close()  # unmapped: the process holds less again
    assert inner["rss_mb"] > 60 and outer["rss_mb"] >= inner["rss_mb"]
    if before is not None:  # Linux: the inner peak holds the 64 MB over what the process held
        assert inner["rss_mb"] >= before / MB + 60
    if inner["rss_scope"] == "call":  # a fresh mark: a block that holds little peaks lower
        with peak_memory() as small:
            pass
        assert small["rss_mb"] < inner["rss_mb"]


def test_a_reset_the_kernel_ignores_gives_the_process_peak_and_says_so(monkeypatch):
    """Some sandboxes take the write to clear_refs and keep the old mark: the figure is then the process's."""
    from vocab_expand import memory

    marks = {"VmHWM:": 1200 * memory.MB, "VmRSS:": 300 * memory.MB}  # the mark stayed at an earlier peak
    monkeypatch.setattr(memory, "_proc_bytes", lambda path, field: marks.get(field))
    with peak_memory() as peak:
        pass
    assert peak == {"rss_mb": 1200.0, "rss_scope": "process"}
    marks["VmHWM:"] = marks["VmRSS:"]  # a reset that took
    with peak_memory() as peak:
        pass
    assert peak["rss_scope"] == "call"


def test_the_default_sample_shrinks_to_the_memory_its_cached_states_may_take():
    from vocab_expand.learning.sampling import AUTO_MAX_POSITIONS, MIN_STATES_POSITIONS, states_position_cap

    assert states_position_cap(4096, 16 * 2**30) > AUTO_MAX_POSITIONS  # a normal machine: no cap
    cap = states_position_cap(4096, 2**30)  # 1 GiB available: a quarter of it for [P, 4096] float32 states
    assert cap * 4 * 4096 <= 2**30 / 4 < (cap + 64) * 4 * (4096 + 8)
    assert states_position_cap(8192, 2**20) == MIN_STATES_POSITIONS and states_position_cap(8192, None) is None


def test_a_tight_memory_cap_gives_a_smaller_sample(tiny_tokenizer, monkeypatch):
    import vocab_expand.memory as memory

    train = [t for t in TINY_TEXT for _ in range(40)] + [
        f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(200)]
    corpus = Corpus("tiny", train=train, heldout=train[-6:])
    model = make_model("untied", len(tiny_tokenizer))
    config = ExpandConfig(input_init="mean", output_init="fit")
    plan = plan_tokens(tiny_tokenizer, ["Jehoshaphat", "prophets"], config)
    roomy = new_rows(model, plan, config, corpus).details["sample"]
    # 16-wide states at 4 + 8 floats a position... so little memory that the cap binds at its floor
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    tight = new_rows(model, plan, config, corpus).details["sample"]
    assert tight["budget"] == 4096 < roomy["budget"], (tight["budget"], roomy["budget"])


def test_the_default_cache_budget_scales_with_the_model_and_the_free_memory(monkeypatch):
    import vocab_expand.strategies.distill.maths as maths

    cpu = torch.device("cpu")
    monkeypatch.setattr(maths, "available_bytes", lambda device: 64 * 2**30)
    assert maths.default_budget(cpu) == maths.CACHE_CAP  # 4 GiB at most
    assert maths.default_budget(cpu, weights=2 * 2**30) == 2**30  # half a 1B bf16 body's weights
    monkeypatch.setattr(maths, "available_bytes", lambda device: 2**30)
    assert maths.default_budget(cpu, weights=2 * 2**30) == 2**29  # half the free memory
    monkeypatch.setattr(maths, "available_bytes", lambda device: None)
    assert maths.default_budget(cpu, weights=2**30) == 0  # unknown: keep none (exact, slower)
