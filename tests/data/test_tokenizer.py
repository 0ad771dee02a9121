"""The word-level tokenizer: special ids, round trips, save/load and the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from signtune.data import tokenizer as tokenizer_module
from signtune.data.tokenizer import Tokenizer, load_or_train_tokenizer, train_tokenizer
from signtune.data.types import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID
from signtune.errors import DataError

TEXTS = [
    "Where did the boy go?",
    "The girl will not eat an apple tomorrow.",
    "I don't know, he said.",
    "It's a well-known place (really): 3.5 km away!",
    "We're here; it's fine.",
    "Did your mother buy three red cars at the store yesterday?",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS, vocab_size=1000, lowercase=False)


def test_special_ids(tok: Tokenizer) -> None:
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID] == [0, 1, 2, 3]
    assert all(i >= 4 for t in TEXTS for i in tok.encode(t))  # encode adds no bos/eos


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_unknown_words_and_specials(tok: Tokenizer) -> None:
    ids = tok.encode("The zebra go?")
    assert UNK_ID in ids
    assert tok.decode([BOS_ID, *tok.encode("Where did the boy go?"), EOS_ID, PAD_ID, PAD_ID]) == (
        "Where did the boy go?"
    )
    assert tok.decode([10_000_000]) == ""  # out-of-range ids are skipped


def test_vocab_size_and_lowercase() -> None:
    small = train_tokenizer(TEXTS, vocab_size=10, lowercase=False)
    assert small.vocab_size == 10
    low = train_tokenizer(TEXTS, vocab_size=1000, lowercase=True)
    assert low.encode("WHERE did") == low.encode("where DID")
    assert low.decode(low.encode("Where did the boy go?")) == "where did the boy go?"
    with pytest.raises(DataError, match=r"data\.vocab_size"):
        train_tokenizer(TEXTS, vocab_size=4, lowercase=False)


def test_save_load(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size
    assert [loaded.encode(t) for t in TEXTS] == tok.encode_batch(TEXTS)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as a tokenizer"):
        Tokenizer.load(tmp_path / "bad.json")


def test_cache_hit_and_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_or_train_tokenizer(TEXTS, vocab_size=1000, lowercase=False, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("tokenizer-")

    def no_training(*args: object, **kwargs: object) -> Tokenizer:
        raise AssertionError("a cache hit must not train")

    with monkeypatch.context() as m:
        m.setattr(tokenizer_module, "train_tokenizer", no_training)
        hit = load_or_train_tokenizer(TEXTS, vocab_size=1000, lowercase=False, cache_dir=tmp_path)
    assert hit.encode_batch(TEXTS) == first.encode_batch(TEXTS)

    load_or_train_tokenizer(TEXTS, vocab_size=1000, lowercase=True, cache_dir=tmp_path)
    load_or_train_tokenizer(TEXTS[:-1], vocab_size=1000, lowercase=False, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3  # settings and texts are part of the key

    files[0].write_text("damaged")  # a damaged entry is trained again
    again = load_or_train_tokenizer(TEXTS, vocab_size=1000, lowercase=False, cache_dir=tmp_path)
    assert again.encode_batch(TEXTS) == first.encode_batch(TEXTS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
