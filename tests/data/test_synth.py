"""The synthetic generator: files, determinism, atomic writes, and a grammar worth learning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from signtune.data import synth
from signtune.data.synth import GLOSSES, HEADER, ensure_synthetic, generate, sample_sentence
from signtune.errors import DataError

SMALL = {"n_train": 24, "n_val": 6, "n_test": 5, "feature_dim": 16}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, seed=3, **SMALL)
    return out


def test_files_header_and_shapes(small: Path) -> None:
    for split, n in (("train", 24), ("val", 6), ("test", 5)):
        path = small / f"how2sign_realigned_{split}.csv"
        assert path.read_text().splitlines()[0] == "\t".join(HEADER)
        rows = _rows(path)
        assert len(rows) == n
        for row in rows:
            vid = row["VIDEO_ID"]
            assert row["VIDEO_NAME"] == f"{vid}-1-rgb_front"
            assert row["SENTENCE_NAME"] == f"{row['SENTENCE_ID']}-1-rgb_front"
            assert row["SENTENCE_ID"].startswith(f"{vid}_")
            assert float(row["START_REALIGNED"]) < float(row["END_REALIGNED"])
            assert 5 <= len(row["SENTENCE"].split()) <= 12
            arr = np.load(small / "features" / f"{row['SENTENCE_NAME']}.npy")
            assert arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[1] == 16
            assert 20 <= arr.shape[0] <= 130
            assert np.isfinite(arr).all()
    train = _rows(small / "how2sign_realigned_train.csv")
    assert len({r["VIDEO_ID"] for r in train}) < len(train)  # several sentences per video
    meta = json.loads((small / "synth.json").read_text())
    assert meta["version"] == synth.VERSION and meta["seed"] == 3
    assert meta["splits"]["val"]["sentences"] == 6


def test_same_seed_gives_identical_bytes(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, seed=3, **SMALL)
    assert _tree(again) == _tree(small)
    other = tmp_path / "other"
    generate(other, seed=4, **SMALL)
    assert _tree(other)["how2sign_realigned_train.csv"] != _tree(small)["how2sign_realigned_train.csv"]


def test_ensure_reuses_then_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    ensure_synthetic(out, seed=1, **SMALL)
    before = _tree(out)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing must be generated when synth.json matches")

    with monkeypatch.context() as m:
        m.setattr(synth, "_Lexicon", boom)
        ensure_synthetic(out, seed=1, **SMALL)
    assert _tree(out) == before

    ensure_synthetic(out, seed=1, **{**SMALL, "feature_dim": 8})  # params differ
    assert np.load(next((out / "features").iterdir())).shape[1] == 8
    (out / "synth.json").unlink()  # incomplete: regenerated
    ensure_synthetic(out, seed=1, **SMALL)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp siblings left


def test_interrupted_generation_leaves_the_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    generate(out, seed=1, **SMALL)
    before = _tree(out)
    real = synth._write_split

    def interrupted(out_: Path, name: str, *args: object, **kwargs: object) -> object:
        if name == "val":
            raise KeyboardInterrupt
        return real(out_, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "_write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(out, seed=2, **SMALL)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "new", seed=2, **SMALL)
    assert not (tmp_path / "new").exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not synthetic data"):
        generate(out, **SMALL)
    assert (out / "thesis.tex").read_text() == "precious"


def test_bad_parameters_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        generate(tmp_path / "x", n_train=0, n_val=1, n_test=-1, feature_dim=0)
    assert len(err.value.problems) == 3


# --- the grammar ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentences() -> list[tuple[list[str], str]]:
    rng = np.random.default_rng(0)
    return [sample_sentence(rng) for _ in range(3000)]


def test_english_is_a_function_of_the_signs(sentences: list[tuple[list[str], str]]) -> None:
    seen: dict[tuple[str, ...], str] = {}
    for glosses, english in sentences:
        assert seen.setdefault(tuple(glosses), english) == english
        assert set(glosses) <= set(GLOSSES)
    assert 60 <= len(GLOSSES) <= 90
    assert len({e for _, e in sentences}) > 0.8 * len(sentences)  # combinatorial, few repeats


def test_sign_order_differs_from_english_order(sentences: list[tuple[list[str], str]]) -> None:
    wh = {"WHO", "WHAT", "WHERE", "WHEN", "WHY"}
    times = {"YESTERDAY": "yesterday", "TOMORROW": "tomorrow", "NOW": "now"}
    reordered = 0
    for glosses, english in sentences:
        words = english.lower().rstrip(".?").split()
        if glosses[-1] in wh:  # WH-sign last, WH-word first
            assert english.split()[0] == glosses[-1].capitalize()
        if glosses[0] in times:  # time sign first, time word last
            assert words[-1] == times[glosses[0]]
        # signs that appear as an English word, in signing order vs in English order
        shared = [g for g in glosses if g.lower() in words]
        if sorted(shared, key=lambda g: words.index(g.lower())) != shared:
            reordered += 1
    assert reordered > 0.5 * len(sentences)


def test_english_has_words_without_signs(sentences: list[tuple[list[str], str]]) -> None:
    function_words = {"the", "a", "an", "is", "are", "will", "did", "does", "do", "to", "at", "in"}
    signed = {g.lower() for g in GLOSSES}
    assert not function_words & signed
    with_function = sum(bool(function_words & set(e.lower().split())) for _, e in sentences)
    assert with_function > 0.9 * len(sentences)


def test_known_translations() -> None:
    rng = np.random.default_rng(0)
    past = {"YESTERDAY": "yesterday", "LAST-WEEK": "last week"}
    future = {"TOMORROW": "tomorrow", "NEXT-WEEK": "next week"}
    pronouns = {"IX-1": "I", "IX-2": "You", "HE": "He", "SHE": "She", "WE": "We", "THEY": "They"}
    persons = {"BOY", "GIRL", "MAN", "WOMAN", "TEACHER", "DOCTOR", "STUDENT"}
    found = {"where": 0, "go": 0}
    for _ in range(30000):
        g, english = sample_sentence(rng)
        if len(g) == 4 and g[0] in past and g[1] in persons and g[2:] == ["GO", "WHERE"]:
            # YESTERDAY BOY GO WHERE -> Where did the boy go yesterday?
            assert english == f"Where did the {g[1].lower()} go {past[g[0]]}?"
            found["where"] += 1
        if len(g) == 4 and g[0] in future and g[1] in pronouns and g[2] == "GO" and g[3] == "STORE":
            # TOMORROW IX-1 GO STORE -> I will go to the store tomorrow.
            assert english == f"{pronouns[g[1]]} will go to the store {future[g[0]]}."
            found["go"] += 1
    assert all(found.values()), found
