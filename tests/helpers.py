"""Builders shared by the tests: tiny tokenizers and models made locally (no network).

Tiny models come in the layouts that matter for resizing: tied (Llama), untied (Llama), untied with a head
bias (Phi), and padded beyond the tokenizer (Llama with spare rows, as Qwen ships).
"""

from __future__ import annotations

import json

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

TINY_TEXT = [
    "And Jehoshaphat said unto the king of Israel, Inquire, I pray thee, at the word of the LORD to day.",
    "Then the king of Israel gathered the prophets together, about four hundred men, and said unto them.",
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "def main(x):\n    return x + 1\n\nclass Foo:\n    pass\n",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "Émile a mangé des crêpes à Noël; 東京 is Tokyo; emoji 🎉🙂 and tabs\tand   spaces.",
]
SPARE_ROWS = 8


def train_byte_level_bpe(vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE trained on TINY_TEXT: same pipeline as GPT-2/SmolLM2, a few hundred tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_TEXT * 5, trainer=trainer)
    return tok


def train_sentencepiece_bpe(vocab_size: int = 400) -> Tokenizer:
    """A SentencePiece-style BPE (spaces as "▁", byte fallback), as in Gemma and Llama 2, trained on TINY_TEXT.

    The 256 byte-fallback entries "<0x00>".."<0xFF>" are plain vocabulary entries, as in Gemma.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"], show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 5, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


# The pre-tokenizer regexes of Llama 3 and Qwen 2 (digits in runs of up to three, or one by one).
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN_SPLIT = LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] }}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                   "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}")


def _train_split_byte_level(pattern: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE with a Split regex before ByteLevel (Llama 3, Qwen 2) and no specials in its vocab."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 5, trainer=trainer)
    return tok


def llama3_style(ignore_merges: bool = True, reserved: int = 8) -> PreTrainedTokenizerFast:
    """Llama 3's layout: specials and reserved tokens are added tokens outside model.vocab, BOS added by the
    post-processor, a chat template naming the header and end-of-turn tokens."""
    tok = _train_split_byte_level(LLAMA3_SPLIT, 400)
    spec = json.loads(tok.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    tok = Tokenizer.from_str(json.dumps(spec))
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens(specials + [f"<|reserved_special_token_{i}|>" for i in range(reserved)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    wrapped.chat_template = LLAMA3_TEMPLATE
    return wrapped


def qwen_style() -> PreTrainedTokenizerFast:
    """Qwen 2's layout: NFC normalizer, Split + ByteLevel, merges not ignored, ChatML specials outside model.vocab."""
    tok = _train_split_byte_level(QWEN_SPLIT, 400)
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def llama2_style() -> PreTrainedTokenizerFast:
    """The Llama 2 hub layout: Prepend("▁") + Replace(" ", "▁") normalizer, no pre-tokenizer, byte fallback,
    <unk> <s> </s> in the vocabulary. Trained per word (as SentencePiece does), then given that pipeline."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 5, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(256):
        vocab.setdefault(f"<0x{i:02X}>", len(vocab))
    spec["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    wrapped.chat_template = LLAMA2_TEMPLATE
    return wrapped


def unigram_style() -> PreTrainedTokenizerFast:
    """A T5-style SentencePiece Unigram: Metaspace pre-tokenizer and decoder, <pad> </s> <unk> as pieces, and
    sentinel tokens added outside the piece list."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 5, trainer=trainer)
    tok.add_special_tokens(["<extra_id_0>", "<extra_id_1>"])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    wrapped.chat_template = CHATML_TEMPLATE.replace("<|im_start|>", "<extra_id_0>").replace("<|im_end|>", "</s>")
    return wrapped


def wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    eos = "<|endoftext|>" if backend.token_to_id("<|endoftext|>") is not None else "<eos>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token="<pad>")


def make_model(layout: str, vocab_rows: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny causal LM of the given layout with ``vocab_rows`` embedding rows, random weights (seeded)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_rows, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                  eos_token_id=0, pad_token_id=1, bos_token_id=0)
    if layout == "bias":
        model = PhiForCausalLM(PhiConfig(**common, tie_word_embeddings=False))
        with torch.no_grad():
            model.lm_head.bias.normal_(0, 0.5)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=(layout == "tied")))
    model.eval()
    return model.to(dtype)


LAYOUTS = ["tied", "untied", "bias", "padded"]


def _ranked_vocab(name: str) -> list[bytes]:
    """The byte strings of a real tiktoken-style vocabulary shipped by the quicktok-v1 package, in rank order.

    File layout: u32 count, then per token u16 length, the bytes, u32 rank (little-endian). The package is
    located without importing it (its import loads a compiled extension).
    """
    import importlib.util
    import struct
    from pathlib import Path

    spec = importlib.util.find_spec("quicktok")
    data = (Path(list(spec.submodule_search_locations)[0]) / "data" / f"{name}.vocab").read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    tokens, pos = [b""] * count, 4
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, pos)
        token = data[pos + 2 : pos + 2 + length]
        (rank,) = struct.unpack_from("<I", data, pos + 2 + length)
        tokens[rank], pos = token, pos + 6 + length
    return tokens


def _last_merge(token: bytes, rank: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The two parts that rank-ordered BPE joins last to form ``token``, using only lower-ranked tokens; None
    for a token that lower ranks cannot build (it stays in the vocabulary, reachable only as a whole)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    limit = rank[token]
    while len(parts) > 2:
        best = min(range(len(parts) - 1), key=lambda i: rank.get(parts[i] + parts[i + 1], limit))
        if rank.get(parts[best] + parts[best + 1], limit) >= limit:
            return None
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return (parts[0], parts[1]) if all(p in rank for p in parts) else None


def real_byte_level(name: str, pattern: str, specials: list[str], ignore_merges: bool) -> Tokenizer:
    """A byte-level BPE over a real ranked vocabulary (merges rebuilt from the ranks), with the given Split
    regex and its special tokens added outside model.vocab, as Llama 3's and Qwen's tokenizer.json have them."""
    tokens = _ranked_vocab(name)
    rank = {t: i for i, t in enumerate(tokens)}
    byte_char = {b: c for b, c in zip(range(256), _bytes_to_unicode())}
    text = {t: "".join(byte_char[b] for b in t) for t in tokens}
    pairs = [_last_merge(t, rank) for t in tokens if len(t) > 1]
    merges = [(text[pair[0]], text[pair[1]]) for pair in pairs if pair is not None]
    tok = Tokenizer(models.BPE(vocab={text[t]: i for i, t in enumerate(tokens)}, merges=merges,
                               ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok


def _bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (printable Latin-1 bytes stand for themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])


def real_llama3() -> PreTrainedTokenizerFast:
    """Meta Llama 3's vocabulary (128,000 ranks) in its tokenizer.json layout: 256 specials outside model.vocab."""
    tok = real_byte_level("llama3", LLAMA3_SPLIT, LLAMA3_SPECIALS, ignore_merges=True)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                       special_tokens=[("<|begin_of_text|>", 128000)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    wrapped.chat_template = LLAMA3_TEMPLATE
    return wrapped


def real_qwen2() -> PreTrainedTokenizerFast:
    """Qwen 2's vocabulary (151,643 ranks, shared by Qwen 2.5 and 3) in its layout: NFC, merges not ignored,
    ChatML specials outside model.vocab."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"]
    tok = real_byte_level("qwen3", QWEN_SPLIT, specials, ignore_merges=False)
    tok.normalizer = normalizers.NFC()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped
