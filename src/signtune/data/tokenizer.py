"""Tokenizers: a word-level one trained on the data, or a pretrained Hugging Face one.

The word-level tokenizer (``Tokenizer``) is trained over HF ``tokenizers`` with a
content-addressed cache. Its ids 0-3 are ``<pad> <s> </s> <unk>`` (``signtune.data.types``);
words and punctuation runs are tokens. ``decode`` puts the text back together the way English
is written, so ``decode(encode(s)) == s`` for ordinary sentences whose words are all in the
vocabulary.

``PretrainedTokenizer`` wraps a saved Hugging Face tokenizer folder (``data.tokenizer``, e.g.
a T5's) with its own special ids (T5: pad 0, eos 1, unk 2, no bos). It is read offline only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

from signtune.data.types import SPECIAL_TOKENS, WORD_LEVEL, SpecialIds
from signtune.errors import ConfigError, DataError, Problem

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

    @property
    def special_ids(self) -> SpecialIds:
        """Pad, bos and eos: ids 0, 1 and 2."""
        return WORD_LEVEL

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
        """Write the tokenizer as HF ``tokenizer.json`` (atomically: temp file, then rename).

        A ``tokenizer_config.json`` beside a ``tokenizer.json`` marks a Hugging Face tokenizer
        folder (``load_saved_tokenizer``), so one left there by an earlier save is removed.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(self._hf.to_str(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if path.name == "tokenizer.json":
            (path.parent / "tokenizer_config.json").unlink(missing_ok=True)

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


def load_or_train_tokenizer(
    texts: list[str],
    *,
    vocab_size: int,
    lowercase: bool,
    cache_dir: Path,
    pretrained: str = "",
    base_dir: Path | None = None,
    save: bool = True,
) -> Tokenizer | PretrainedTokenizer:
    """The tokenizer ``data.tokenizer`` names, or the cached word-level one for these texts.

    Args:
        texts: the training sentences.
        vocab_size: see ``train_tokenizer``.
        lowercase: see ``train_tokenizer``; a pretrained tokenizer lowercases before encoding.
        cache_dir: where ``tokenizer-<sha256>.json`` files live.
        pretrained: ``data.tokenizer``: a Hugging Face tokenizer folder (relative to
            ``base_dir``) or a hub id already in the local cache; empty trains a word-level one.
        base_dir: the study directory.
        save: write a newly trained tokenizer into ``cache_dir`` (False: the cache is only read,
            as by ``study data check``).

    Raises:
        ConfigError: ``pretrained`` is set but cannot be read offline.
        DataError: ``vocab_size`` is too small to hold the special tokens.
    """
    if pretrained:
        return load_pretrained_tokenizer(pretrained, base_dir=base_dir, lowercase=lowercase)
    key = cache_key(texts, vocab_size=vocab_size, lowercase=lowercase)
    path = Path(cache_dir) / f"tokenizer-{key[:32]}.json"
    if path.is_file():
        try:
            return Tokenizer.load(path)
        except DataError:
            pass  # a damaged cache entry is trained again and overwritten
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, lowercase=lowercase)
    if save:
        tokenizer.save(path)
    return tokenizer


# ----------------------------------------------------------------- pretrained (Hugging Face)

SAVE_HINT = (
    "on a machine with internet: `AutoTokenizer.from_pretrained('t5-base').save_pretrained('DIR')` "
    "(the same DIR as the model's save_pretrained), copy DIR here and point the key at it"
)


def local_hf_source(name: str, base_dir: Path | None, filename: str) -> tuple[str | None, Path]:
    """Resolve a Hugging Face model or tokenizer name without the network.

    Args:
        name: a folder (absolute, or relative to ``base_dir``) or a hub id such as ``t5-base``.
        base_dir: the study directory; None means the working directory.
        filename: a file the folder or the cached repo must hold (``config.json``...).

    Returns:
        ``(source, folder)``: ``source`` is the folder when it holds ``filename``, else ``name``
        when the local HF cache holds ``filename`` for that hub id, else None; ``folder`` is
        where a folder was looked for (for error messages).
    """
    folder = Path(name).expanduser()
    if not folder.is_absolute():
        folder = ((base_dir if base_dir is not None else Path.cwd()) / folder).absolute()
    if (folder / filename).is_file():
        return str(folder), folder
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, filename)
    except Exception:  # not a valid hub id (a path like ../t5), or no hub library
        cached = None
    return (name if isinstance(cached, str) else None), folder


def hf_cache_dir() -> str:
    """The Hugging Face hub cache this process reads (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:
        return "~/.cache/huggingface/hub"


class PretrainedTokenizer:
    """A Hugging Face fast tokenizer (e.g. a T5's) implementing ``TextTokenizer``.

    Its special ids are its own (``special_ids``): the tokenizer's pad and eos, and its bos,
    or its pad when it has none (T5 starts decoding from pad).
    """

    def __init__(self, fast: Any, *, where: str = "data.tokenizer", lowercase: bool = False) -> None:
        """Wrap a ``transformers.PreTrainedTokenizerFast``.

        Raises:
            ConfigError: the tokenizer has no pad or eos token.
        """
        pad, eos, bos = fast.pad_token_id, fast.eos_token_id, fast.bos_token_id
        if pad is None or eos is None:
            raise ConfigError(
                Problem(
                    where,
                    f"the tokenizer has pad_token_id={pad} and eos_token_id={eos}; both are needed",
                    "set pad_token and eos_token in its tokenizer_config.json (T5's are <pad> and </s>)",
                )
            )
        self._fast = fast
        self._backend = fast.backend_tokenizer
        self._lowercase = lowercase
        self.special_ids = SpecialIds(pad=int(pad), bos=int(pad if bos is None else bos), eos=int(eos))

    @property
    def vocab_size(self) -> int:
        """Number of ids, added and special tokens included."""
        return len(self._fast)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        return list(self._backend.encode(text.lower() if self._lowercase else text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of many texts at once (parallel in Rust)."""
        if self._lowercase:
            texts = [t.lower() for t in texts]
        return [list(e.ids) for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens and ids past the vocabulary (a T5's padded rows) are skipped."""
        n = self.vocab_size
        return str(self._fast.decode([int(i) for i in ids if 0 <= int(i) < n], skip_special_tokens=True))

    def save(self, path: Path) -> None:
        """Write the tokenizer folder ``path.parent``: ``path`` (tokenizer.json) and tokenizer_config.json.

        Raises:
            ValueError: ``path`` is not named ``tokenizer.json``.
        """
        path = Path(path)
        if path.name != "tokenizer.json":
            raise ValueError(f"a Hugging Face tokenizer is saved as a folder's tokenizer.json, not {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fast.save_pretrained(str(path.parent))


def _read_fast_tokenizer(source: str) -> Any:
    """``PreTrainedTokenizerFast`` from a folder or cached hub id, offline (OSError when absent)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers.PreTrainedTokenizerFast.from_pretrained(source, local_files_only=True)


def load_pretrained_tokenizer(name: str, *, base_dir: Path | None, lowercase: bool = False) -> PretrainedTokenizer:
    """The Hugging Face tokenizer ``data.tokenizer`` names, read offline.

    Args:
        name: a folder with ``tokenizer.json`` (relative to ``base_dir``) or a hub id in the cache.
        base_dir: the study directory.
        lowercase: lowercase texts before encoding.

    Raises:
        ConfigError: nothing usable there; the message says where it looked and how to save one.
    """
    source, folder = local_hf_source(name, base_dir, "tokenizer.json")
    if source is None:
        raise ConfigError(
            Problem(
                "data.tokenizer",
                f"{name!r} is neither a folder with tokenizer.json (looked in {folder}) nor a tokenizer in "
                f"the Hugging Face cache ({hf_cache_dir()}); nothing is downloaded",
                SAVE_HINT + "; relative paths are relative to the study folder",
            )
        )
    try:
        fast = _read_fast_tokenizer(source)
    except Exception as exc:  # tokenizers raises plain Exception for a damaged tokenizer.json
        raise ConfigError(
            Problem("data.tokenizer", f"cannot read the tokenizer at {source} ({exc})", SAVE_HINT)
        ) from None
    return PretrainedTokenizer(fast, where=f"data.tokenizer ({source})", lowercase=lowercase)


def load_saved_tokenizer(path: Path) -> Tokenizer | PretrainedTokenizer:
    """A tokenizer written by ``save``: the Hugging Face one when tokenizer_config.json is beside it.

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    if (path.parent / "tokenizer_config.json").is_file():
        try:
            return PretrainedTokenizer(_read_fast_tokenizer(str(path.parent)), where=str(path.parent))
        except Exception as exc:  # ConfigError, or a damaged file
            raise DataError(
                Problem(
                    str(path.parent), f"cannot be read as a tokenizer folder ({exc})", "re-run the step that wrote it"
                )
            ) from None
    return Tokenizer.load(path)
