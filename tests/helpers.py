"""Builders shared by the tests: tiny tokenizers and models made locally (no network).

Tiny models come in the layouts that matter for resizing: tied (Llama), untied (Llama), untied with a head
bias (Phi), and padded beyond the tokenizer (Llama with spare rows, as Qwen ships).
"""

from __future__ import annotations

import json

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
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
