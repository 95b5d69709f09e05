"""Mining on a tiny hand-made corpus whose answer can be worked out by hand."""

from __future__ import annotations

import pytest

from vocab_expand import Corpus, mine
from vocab_expand.mining import count_words, heldout_saving


def test_count_words_forms():
    counts = count_words(["Jehoshaphat said to Jehoshaphat,\nJehoshaphat  x (Jehoshaphat)"])
    assert counts[("Jehoshaphat", "initial")] == 3  # start, after a newline, after "("
    assert counts[("Jehoshaphat", "mid")] == 1
    assert counts[("x", "initial")] == 1  # after two spaces the pre-token is not " x"


def test_mine_ranks_by_tokens_saved(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = {w: len(tok.tokenize(" " + w)) for w in ("Jehoshaphat", "Nebuchadnezzar", "prophets")}
    docs = ["x Jehoshaphat y"] * 6 + ["x Nebuchadnezzar y"] * 5 + ["x prophets y"] * 20 + ["x the y"] * 50
    found = mine(tok, Corpus("hand", docs, ["a Jehoshaphat b"]), top_k=10, min_count=5, progress=False)
    expected = sorted(
        ((c * (pieces[w] - 1), w) for w, c in (("Jehoshaphat", 6), ("Nebuchadnezzar", 5), ("prophets", 20))
         if pieces[w] > 1), reverse=True)
    assert [(c.tokens_saved, c.word) for c in found] == expected
    assert all(c.form == "mid" and c.token == "Ġ" + c.word for c in found)
    assert mine(tok, Corpus("hand", docs, []), top_k=1, progress=False)[0].word == expected[0][1]
    assert mine(tok, Corpus("hand", docs, []), pattern="^Neb", progress=False)[0].word == "Nebuchadnezzar"
    assert [c.word for c in mine(tok, Corpus("hand", docs, []), min_count=6, progress=False)] == [
        w for _, w in expected if w != "Nebuchadnezzar"]
    saving = heldout_saving(tok, Corpus("hand", docs, ["a Jehoshaphat b"]), found)
    assert saving["tokens_saved"] == pieces["Jehoshaphat"] - 1
    assert saving["heldout_tokens"] == len(tok.tokenize("a Jehoshaphat b"))


def test_mine_bad_input(tiny_tokenizer):
    with pytest.raises(ValueError, match="top_k"):
        mine(tiny_tokenizer, Corpus("c", ["a"], []), top_k=0)
    with pytest.raises(ValueError, match="no training documents"):
        mine(tiny_tokenizer, Corpus("c", [], ["a"]))
