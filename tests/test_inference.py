"""The promoted-model folder: what it records, how it loads, and that translate uses its run.amp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from signtune.config import RunConfig, TrainConfig, apply_overrides
from signtune.data.tokenizer import train_tokenizer
from signtune.errors import DataError
from signtune.inference import load_promoted, translate, write_promoted
from signtune.models import build_model

D = 8
TEXTS = ["the cat sat", "a dog ran", "the dog sat down"]


def _promoted(folder: Path, amp: bool) -> Path:
    cfg = apply_overrides(
        TrainConfig(),
        {
            "model.d_model": 16,
            "model.num_heads": 2,
            "model.num_encoder_layers": 1,
            "model.num_decoder_layers": 1,
            "eval.max_len": 6,
            "run.amp": amp,
        },
    )
    tok = train_tokenizer(TEXTS, vocab_size=50, lowercase=False)
    model = build_model(cfg.model, feature_dim=D, vocab_size=tok.vocab_size)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_promoted(folder, cfg, feature_dim=D, vocab_size=tok.vocab_size, tokenizer=tok, architecture=None)
    return folder


@pytest.mark.parametrize("amp", [True, False])
def test_the_run_section_is_written_and_translate_decodes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amp: bool
) -> None:
    folder = _promoted(tmp_path / "promoted", amp)
    assert json.loads((folder / "config.json").read_text())["run"]["amp"] is amp
    promoted = load_promoted(folder)
    assert promoted.run.amp is amp and promoted.feature_dim == D and not promoted.model.training

    import signtune.train.loop as loop

    seen: list[object] = []
    decode = loop.translate

    def spy(*args: object, **kwargs: object) -> list[str]:
        seen.append(kwargs["amp"])
        return decode(*args, **kwargs)

    monkeypatch.setattr(loop, "translate", spy)
    clips = [np.zeros((5, D), dtype=np.float32), np.ones((3, D), dtype=np.float32)]
    hyps = translate(promoted, clips, beam_size=2, device="cpu")
    assert len(hyps) == 2 and seen == [amp]


def test_a_folder_promoted_before_the_run_section_keeps_its_amp(tmp_path: Path) -> None:
    folder = _promoted(tmp_path / "promoted", amp=False)
    meta = json.loads((folder / "config.json").read_text())
    del meta["run"]  # as promote-best wrote it before: run.amp only in the flat config
    (folder / "config.json").write_text(json.dumps(meta))
    assert load_promoted(folder).run.amp is False
    del meta["config"]
    (folder / "config.json").write_text(json.dumps(meta))
    assert load_promoted(folder).run == RunConfig()  # nothing recorded: the defaults


def test_a_damaged_folder_is_a_data_error(tmp_path: Path) -> None:
    folder = _promoted(tmp_path / "promoted", amp=True)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="is not a readable promoted model"):
        load_promoted(folder)
