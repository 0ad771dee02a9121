"""The t5 family on a tiny local T5: loading offline, groups, decoding, the tokenizer adapter, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tests.models.tiny_t5 import save_sign_encoder, save_tiny_t5

from signtune.config import ModelConfig
from signtune.data.tokenizer import PretrainedTokenizer, load_pretrained_tokenizer, load_saved_tokenizer
from signtune.data.types import WORD_LEVEL, SpecialIds, special_ids
from signtune.errors import ConfigError
from signtune.models import SignT5, build_model, check_model_files, model_architecture
from signtune.train.decode import beam_search, greedy_decode

TEXTS = [
    "Where did the boy go?",
    "The girl went home.",
    "My mother likes apples, and my father likes cake.",
    "Who is that man?",
]
D = 12
T5_IDS = SpecialIds(pad=0, bos=0, eos=1)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", TEXTS)


@pytest.fixture(scope="module")
def tokenizer(t5_dir: Path) -> PretrainedTokenizer:
    return load_pretrained_tokenizer(str(t5_dir), base_dir=None)


def build(t5_dir: Path, **model: object) -> SignT5:
    torch.manual_seed(0)
    cfg = ModelConfig(family="t5", pretrained=str(t5_dir), dropout=0.0, **model)  # type: ignore[arg-type]
    out = build_model(cfg, feature_dim=D, vocab_size=16, specials=T5_IDS)
    assert isinstance(out, SignT5)
    return out


def frames(b: int = 3, t: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randn(b, t, D, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 5:] = False
    return src, mask


# --------------------------------------------------------------------- tokenizer adapter


def test_pretrained_tokenizer_round_trip(tokenizer: PretrainedTokenizer, tmp_path: Path) -> None:
    assert special_ids(tokenizer) == T5_IDS  # T5: pad 0, no bos (decoding starts from pad), eos 1
    assert special_ids(object()) == WORD_LEVEL
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids and min(ids) > 2  # no specials added
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode([0, *ids, 1, 0, 0]) == text  # specials skipped
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]
    assert tokenizer.decode([*tokenizer.encode(TEXTS[0]), 10_000]) == TEXTS[0]  # ids past the vocab (T5 pads it)
    assert 2 in tokenizer.encode("Where did the zebra go?")  # unknown word -> <unk>
    tokenizer.save(tmp_path / "out" / "tokenizer.json")
    again = load_saved_tokenizer(tmp_path / "out" / "tokenizer.json")
    assert isinstance(again, PretrainedTokenizer)
    assert again.special_ids == T5_IDS and again.vocab_size == tokenizer.vocab_size
    assert again.decode(again.encode(TEXTS[2])) == TEXTS[2]


def test_pretrained_tokenizer_relative_to_study_dir_and_lowercase(t5_dir: Path) -> None:
    tok = load_pretrained_tokenizer(t5_dir.name, base_dir=t5_dir.parent, lowercase=True)
    assert tok.encode("WHO is THAT man?") == tok.encode("who is that man?")


def test_missing_tokenizer_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_pretrained_tokenizer("models/nope", base_dir=tmp_path)
    text = str(info.value)
    assert "data.tokenizer" in text and str(tmp_path / "models" / "nope") in text
    assert "save_pretrained" in text and "nothing is downloaded" in text


# --------------------------------------------------------------------- model


def test_groups_partition_every_parameter_once(t5_dir: Path) -> None:
    model = build(t5_dir)
    groups = model.named_groups()
    assert list(groups) == ["projection", "t5_encoder", "t5_decoder"]
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters()})
    assert model.t5.shared.weight in groups["t5_decoder"]  # the encoder reads inputs_embeds, not tokens
    assert model.projection.weight.shape == (32, D)
    assert len(model.encoder_layers()) == 2


def test_forward_and_cached_decoding_match_the_full_forward(t5_dir: Path) -> None:
    model = build(t5_dir).eval()
    src, mask = frames()
    ids = greedy_decode(model, src, mask, max_len=6, bos_id=0, eos_id=1)
    # The cached steps agree with teacher forcing on the decoded prefix, and with HF's generate.
    with torch.no_grad():
        embeds = model.projection(src)
        hf = model.t5.generate(
            inputs_embeds=embeds, attention_mask=mask.long(), max_new_tokens=6, num_beams=1, do_sample=False
        )
    for row, out in enumerate(ids):
        expected = [t for t in hf[row].tolist()[1:] if t != 0]
        expected = expected[: expected.index(1)] if 1 in expected else expected
        assert out == expected
    tgt = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 0], [0, 4, 0, 0]])
    with torch.no_grad():
        logits = model(src, mask, tgt)
        memory = model.encode(src, mask)
        cache = model.start_decoding(memory, mask, 4)
        steps = torch.stack([model.decode_step(tgt[:, i], cache) for i in range(4)], dim=1)
    assert logits.shape == (3, 4, model.t5.config.vocab_size)
    assert torch.allclose(logits, steps, atol=1e-5)
    beams = beam_search(model, src, mask, beam_size=3, max_len=6, bos_id=0, eos_id=1)
    assert len(beams) == 3


def test_sign_encoder_sits_before_the_projection(t5_dir: Path, tmp_path: Path) -> None:
    enc_dir = save_sign_encoder(tmp_path / "promoted", feature_dim=D)
    model = build(t5_dir, sign_encoder=str(enc_dir))
    groups = model.named_groups()
    assert list(groups) == ["sign_encoder", "projection", "t5_encoder", "t5_decoder"]
    assert model.projection.weight.shape == (32, 16)  # the sign encoder's d_model -> T5's
    from safetensors.torch import load_file

    saved = load_file(str(enc_dir / "model.safetensors"))
    assert torch.equal(model.sign_encoder.input_proj.weight, saved["input_proj.weight"])  # type: ignore[union-attr]
    assert len(model.encoder_layers()) == 4  # 2 sign-encoder blocks, then 2 T5 blocks
    assert model.encoder_layers()[0] is model.sign_encoder.encoder_blocks[0]  # type: ignore[union-attr]
    src, mask = frames()
    assert model(src, mask, torch.zeros(3, 2, dtype=torch.long)).shape[:2] == (3, 2)

    # Rebuilt from its architecture record, with no file read, it computes the same thing.
    arch = model_architecture(
        ModelConfig(family="t5", pretrained=str(t5_dir), sign_encoder=str(enc_dir), dropout=0.0), base_dir=None
    )
    assert arch is not None
    json.dumps(arch)  # stored in a promoted model's config.json
    clone = build_model(ModelConfig(family="t5"), feature_dim=D, vocab_size=0, architecture=arch)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    tgt = torch.tensor([[0, 5], [0, 6], [0, 7]])
    assert torch.allclose(model(src, mask, tgt), clone(src, mask, tgt))


def test_sign_encoder_on_other_features_is_refused(t5_dir: Path, tmp_path: Path) -> None:
    enc_dir = save_sign_encoder(tmp_path / "promoted", feature_dim=D + 1)
    with pytest.raises(ConfigError, match=r"model\.sign_encoder.*13-d features, but data\.feature_dim is 12"):
        build(t5_dir, sign_encoder=str(enc_dir))


# --------------------------------------------------------------------- errors


def test_bad_pretrained_path_is_a_clear_error(tmp_path: Path) -> None:
    cfg = ModelConfig(family="t5", pretrained="models/t5-base", sign_encoder="nowhere")
    with pytest.raises(ConfigError) as info:
        check_model_files(cfg, tokenizer="", base_dir=tmp_path)
    text = str(info.value)
    assert "model.pretrained" in text and str(tmp_path / "models" / "t5-base") in text
    assert "save_pretrained" in text and "Hugging Face cache" in text
    assert "data.tokenizer: is empty" in text  # the T5 needs its own vocabulary
    assert "model.sign_encoder" in text and str(tmp_path / "nowhere") in text
    assert len(info.value.problems) == 3
    with pytest.raises(ConfigError, match=r"model\.pretrained: is empty"):
        build_model(ModelConfig(family="t5"), feature_dim=D, vocab_size=10)
    with pytest.raises(ConfigError, match=r"model\.pretrained.*looked in"):
        build_model(cfg, feature_dim=D, vocab_size=10, base_dir=tmp_path)


def test_pickled_weights_only_are_refused(t5_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text((t5_dir / "config.json").read_text())
    cfg = ModelConfig(family="t5", pretrained=str(folder))
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        check_model_files(cfg, tokenizer=str(t5_dir), base_dir=None)
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        build_model(cfg, feature_dim=D, vocab_size=10)


def test_word_level_ids_do_not_fit_a_t5(t5_dir: Path) -> None:
    cfg = ModelConfig(family="t5", pretrained=str(t5_dir))
    with pytest.raises(ConfigError, match=r"data\.tokenizer: has pad/start/eos ids 0/1/2, but the T5 .* uses 0/0/1"):
        build_model(cfg, feature_dim=D, vocab_size=10, specials=WORD_LEVEL)
    with pytest.raises(ConfigError, match=r"data\.tokenizer: has 5000 tokens"):
        build_model(cfg, feature_dim=D, vocab_size=5000, specials=T5_IDS)


def test_negative_freezing_is_refused(t5_dir: Path) -> None:
    cfg = ModelConfig(family="t5", pretrained=str(t5_dir), freeze_first_n_layers=-1, unfreeze_at_epoch=-2)
    with pytest.raises(ConfigError) as info:
        build_model(cfg, feature_dim=D, vocab_size=10)
    assert len(info.value.problems) == 2


def test_cache_reorder_moves_rows(t5_dir: Path) -> None:
    model = build(t5_dir).eval()
    src, mask = frames()
    tokens = [torch.tensor([0, 0, 0]), torch.tensor([5, 6, 7])]
    with torch.no_grad():
        memory = model.encode(src, mask)
        # memory=True: rows move with their memory, as after dropping or permuting sentences.
        cache = model.start_decoding(memory, mask, 4)
        model.decode_step(tokens[0], cache)
        index = torch.tensor([2, 0, 1])
        cache.reorder(index)
        moved = model.decode_step(tokens[1][index], cache)
        fresh = model.start_decoding(memory[index], mask[index], 4)
        model.decode_step(tokens[0][index], fresh)
        assert torch.allclose(moved, model.decode_step(tokens[1][index], fresh), atol=1e-5)
        # memory=False (beam search): the beams of one sentence share a memory; only their prefixes move.
        beams = memory[:1].repeat(3, 1, 1), mask[:1].repeat(3, 1)
        cache = model.start_decoding(*beams, 4)
        model.decode_step(torch.tensor([0, 0, 0]), cache)
        model.decode_step(torch.tensor([5, 6, 7]), cache)
        cache.reorder(torch.tensor([2, 2, 0]), memory=False)
        moved = model.decode_step(torch.tensor([4, 4, 4]), cache)
        fresh = model.start_decoding(*beams, 4)
        model.decode_step(torch.tensor([0, 0, 0]), fresh)
        model.decode_step(torch.tensor([7, 7, 5]), fresh)
        assert torch.allclose(moved, model.decode_step(torch.tensor([4, 4, 4]), fresh), atol=1e-5)


def test_hub_id_is_read_from_the_local_cache_offline(
    t5_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someone--tiny-t5"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    shutil.copytree(t5_dir, repo / "snapshots" / "abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = load_pretrained_tokenizer("someone/tiny-t5", base_dir=tmp_path)  # no such folder: the cache
    assert tok.special_ids == T5_IDS
    cfg = ModelConfig(family="t5", pretrained="someone/tiny-t5")
    check_model_files(cfg, tokenizer="someone/tiny-t5", base_dir=tmp_path)
    model = build_model(cfg, feature_dim=D, vocab_size=tok.vocab_size, specials=tok.special_ids, base_dir=tmp_path)
    assert isinstance(model, SignT5) and model.t5.config.d_model == 32
    with pytest.raises(ConfigError, match=r"nor a model in the Hugging Face cache \(" + re.escape(str(tmp_path))):
        build_model(ModelConfig(family="t5", pretrained="someone/other-t5"), feature_dim=D, vocab_size=10)


def test_saved_tokenizers_read_back_as_their_kind(tokenizer: PretrainedTokenizer, tmp_path: Path) -> None:
    from signtune.data.tokenizer import Tokenizer, train_tokenizer

    out = tmp_path / "promoted" / "tokenizer.json"
    tokenizer.save(out)  # an earlier t5 promotion into the same folder ...
    word = train_tokenizer(TEXTS, vocab_size=100, lowercase=False)
    word.save(out)  # ... then a transformer one: no stale tokenizer_config.json makes it look like HF
    again = load_saved_tokenizer(out)
    assert isinstance(again, Tokenizer) and special_ids(again) == WORD_LEVEL
    assert again.decode(again.encode(TEXTS[0])) == TEXTS[0]


def test_sign_encoder_positions_must_fit_max_frames(t5_dir: Path, tmp_path: Path) -> None:
    enc_dir = save_sign_encoder(tmp_path / "promoted", feature_dim=D)  # max_positions 1024 (the default)
    cfg = ModelConfig(family="t5", pretrained=str(t5_dir), sign_encoder=str(enc_dir))
    check_model_files(cfg, tokenizer=str(t5_dir), base_dir=None, max_frames=1024)
    with pytest.raises(ConfigError) as info:
        check_model_files(cfg, tokenizer=str(t5_dir), base_dir=None, max_frames=2048)
    (problem,) = info.value.problems
    assert problem.where == "data.max_frames / model.sign_encoder"
    assert "2048 frames" in problem.message and "1024 positions" in problem.message
    assert problem.fix.startswith("set data.max_frames to 1024 or less")


def test_damaged_sign_encoder_weights_are_a_clear_error(t5_dir: Path, tmp_path: Path) -> None:
    enc_dir = save_sign_encoder(tmp_path / "promoted", feature_dim=D)
    weights = enc_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated copy: safetensors' own error type
    with pytest.raises(ConfigError, match=r"model\.sign_encoder.*is not a readable promoted model"):
        build(t5_dir, sign_encoder=str(enc_dir))
