"""A word-level tokenizer over HF ``tokenizers``, with a content-addressed cache.

Ids 0-3 are ``<pad> <s> </s> <unk>`` (``signtune.data.types``); words and punctuation runs are
tokens. ``decode`` puts the text back together the way English is written, so
``decode(encode(s)) == s`` for ordinary sentences whose words are all in the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

from signtune.data.types import SPECIAL_TOKENS
from signtune.errors import DataError, Problem

CACHE_FORMAT = 1

_DETOKENIZE = [
    (re.compile(r" +([.,?!;:%)\]}]+)"), r"\1"),  # no space before closing punctuation
    (re.compile(r"([(\[{]) +"), r"\1"),  # nor after opening brackets
    (re.compile(r"(\w) ' (s|t|re|ve|ll|d|m)\b"), r"\1'\2"),  # don't, it's, we're
    (re.compile(r"(\w) - (?=\w)"), r"\1-"),  # well-known
    (re.compile(r"(\d)([.,]) (?=\d)"), r"\1\2"),  # 3.5, 1,000
]


def _detokenize(tokens: list[str]) -> str:
    text = " ".join(tokens)
    for pattern, repl in _DETOKENIZE:
        text = pattern.sub(repl, text)
    return text


class Tokenizer:
    """Word-level tokenizer implementing ``signtune.data.types.TextTokenizer``."""

    def __init__(self, hf: HFTokenizer, *, where: str = "tokenizer") -> None:
        """Wrap a HF tokenizer whose first four ids are ``<pad> <s> </s> <unk>``.

        Raises:
            DataError: the special tokens are missing or have other ids.
        """
        found = [hf.id_to_token(i) for i in range(len(SPECIAL_TOKENS))]
        if found != SPECIAL_TOKENS:
            raise DataError(
                Problem(
                    where,
                    f"ids 0-3 must be {SPECIAL_TOKENS}, but are {found}",
                    "train the tokenizer with signtune.data.tokenizer.train_tokenizer",
                )
            )
        self._hf = hf
        self._n_special = len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return int(self._hf.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        """The id of one token, or None when it is not in the vocabulary."""
        i = self._hf.token_to_id(token)
        return None if i is None else int(i)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without bos/eos; unknown words become ``<unk>`` (3)."""
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of many texts at once (parallel in Rust)."""
        return [list(e.ids) for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens and ids outside the vocabulary are skipped."""
        tokens = []
        for i in ids:
            i = int(i)
            if i >= self._n_special:
                token = self._hf.id_to_token(i)
                if token is not None:
                    tokens.append(token)
        return _detokenize(tokens)

    def save(self, path: Path) -> None:
        """Write the tokenizer as HF ``tokenizer.json`` (atomically: temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(self._hf.to_str(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        """Read a tokenizer written by ``save``.

        Raises:
            DataError: the file is missing or is not a tokenizer with ids 0-3 special.
        """
        path = Path(path)
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception for bad JSON
            raise DataError(
                Problem(
                    str(path),
                    f"cannot be read as a tokenizer: {exc}",
                    "delete it so that it is trained again, or point at a tokenizer.json",
                )
            ) from exc
        return cls(hf, where=str(path))


def train_tokenizer(texts: list[str], *, vocab_size: int, lowercase: bool) -> Tokenizer:
    """Train a word-level tokenizer on ``texts``.

    Args:
        texts: the training sentences.
        vocab_size: the most ids, special tokens included; the most frequent words are kept.
        lowercase: lowercase text before splitting it (``decode`` then returns lowercase).

    Raises:
        DataError: ``vocab_size`` is too small to hold the special tokens.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise DataError(
            Problem(
                "data.vocab_size",
                f"must be > {len(SPECIAL_TOKENS)} (the special tokens), but got {vocab_size}",
                "set data.vocab_size to a few thousand",
            )
        )
    hf = HFTokenizer(models.WordLevel(unk_token="<unk>"))
    if lowercase:
        hf.normalizer = normalizers.Lowercase()
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)


def cache_key(texts: list[str], *, vocab_size: int, lowercase: bool) -> str:
    """sha256 of the texts and settings: the name of a cached tokenizer."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "vocab_size": vocab_size, "lowercase": lowercase}).encode())
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def load_or_train_tokenizer(texts: list[str], *, vocab_size: int, lowercase: bool, cache_dir: Path) -> Tokenizer:
    """The cached tokenizer for these texts and settings, trained and cached on a miss.

    Args:
        texts: the training sentences.
        vocab_size: see ``train_tokenizer``.
        lowercase: see ``train_tokenizer``.
        cache_dir: where ``tokenizer-<sha256>.json`` files live.
    """
    key = cache_key(texts, vocab_size=vocab_size, lowercase=lowercase)
    path = Path(cache_dir) / f"tokenizer-{key[:32]}.json"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except DataError:
            pass  # a damaged cache entry is trained again and overwritten
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)
    tokenizer.save(path)
    return tokenizer
