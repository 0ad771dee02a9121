"""The ``max-len`` rule: val/test references longer than eval.max_len tokens of the study's tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.data.helpers import Dataset
from tests.reliability.helpers import edit, make_project, study

from signtune.data.check import DecodeLimit, check_data
from signtune.data.check_stats import max_len_findings
from signtune.data.findings import CheckedSplit
from signtune.data.manifest import ManifestRow
from signtune.data.synth import generate
from signtune.data.tokenizer import train_tokenizer

VAL = Path("studies/t/data/how2sign_realigned_val.csv")


def _words(n: int) -> str:
    return " ".join(["word"] * n) + "."  # n + 1 tokens: the full stop is one of its own


def _split(lengths: list[int], name: str = "val") -> CheckedSplit:
    rows = [ManifestRow(row=i + 2, id=f"clip{i}", text=_words(n)) for i, n in enumerate(lengths)]
    return CheckedSplit(name, Path(f"{name}.tsv"), rows)


TOK = train_tokenizer(["word ."], vocab_size=10, lowercase=False)


def test_long_references_are_counted_and_the_99th_percentile_is_named() -> None:
    split = _split([8] * 10 + [100] * 9 + [130])  # 9, 101 and 131 tokens
    (f,) = max_len_findings(split, TOK, DecodeLimit(64), tokenizer_name="word-level")
    assert (f.severity, f.rule, f.split) == ("warning", "max-len", "val")
    assert f.rows == tuple(range(12, 22)) and f.ids[0] == "clip10"
    assert f.message == (
        "10 of 20 val references are longer than eval.max_len = 64 tokens (the trainer default), counted with "
        "the study's tokenizer (word-level); their hypotheses are cut at 64 tokens, which lowers val BLEU; "
        "the longest: row 21, 131 tokens"
    )
    # np.percentile(..., 99) of [9]*10 + [101]*9 + [131] is 125.3: 126 tokens, plus EOS
    assert f.fix == (
        "raise eval.max_len to the val split's 99th percentile (126 tokens, plus EOS): "
        "`fixed: {eval.max_len: 127}` in study.yaml"
    )


def test_fixed_and_searched_limits_are_named_as_such() -> None:
    split = _split([8, 9, 70], name="test")  # 9, 10 and 71 tokens: the 99th percentile is 69.8
    (fixed,) = max_len_findings(split, TOK, DecodeLimit(32, "fixed"), tokenizer_name="t")
    assert "eval.max_len = 32 tokens (fixed in study.yaml)" in fixed.message
    assert fixed.fix.endswith("(70 tokens, plus EOS): `fixed: {eval.max_len: 71}` in study.yaml")
    (searched,) = max_len_findings(split, TOK, DecodeLimit(32, "searched"), tokenizer_name="t")
    assert "(the smallest value the search space gives it)" in searched.message
    assert searched.fix.endswith("raise the lowest eval.max_len of the search space to 71")


def test_a_rare_long_reference_is_info_and_none_is_nothing() -> None:
    (f,) = max_len_findings(_split([5] * 199 + [80]), TOK, DecodeLimit(64), tokenizer_name="t")
    assert f.severity == "info" and f.rows == (201,)
    assert f.fix.startswith("fewer than 1% are longer; eval.max_len: 82 would decode even the longest whole")
    assert max_len_findings(_split([63, 5]), TOK, DecodeLimit(64), tokenizer_name="t") == []  # 64 tokens fit


def _long_val(ds: Dataset, text: str) -> None:
    lines = ds.lines("val")
    cells = lines[1].rstrip("\n").split("\t")
    cells[6] = text
    ds.write_lines("val", [lines[0], "\t".join(cells) + "\n", *lines[2:]])


def test_the_check_counts_with_the_study_tokenizer(make_dataset: Callable[..., Dataset], tmp_path: Path) -> None:
    from tests.models.tiny_t5 import tiny_tokenizer

    ds = make_dataset()  # its other sentences have at most 11 tokens, either way
    text = "one two three four five six seven eight nine ten eleven."  # word-level: 12 tokens; T5's: 11
    _long_val(ds, text)
    word_level = check_data(ds.cfg(), tmp_path, max_len=DecodeLimit(11))
    (f,) = [f for f in word_level.findings if f.rule == "max-len"]
    assert f.split == "val" and f.rows == (2,) and "word-level, " in f.message and "row 2, 12 tokens" in f.message
    assert not (tmp_path / ".cache").exists(), "the check trains the tokenizer in memory; it writes no cache"

    tiny_tokenizer([text]).save_pretrained(str(tmp_path / "tok"))
    pretrained = check_data(ds.cfg(tokenizer="tok"), tmp_path, max_len=DecodeLimit(11))
    assert [f for f in pretrained.findings if f.rule == "max-len"] == []

    missing = check_data(ds.cfg(tokenizer="nowhere"), tmp_path, max_len=DecodeLimit(11))
    (err,) = [f for f in missing.errors if f.rule == "tokenizer"]
    assert err.where == "data.tokenizer" and "'nowhere' is neither a folder with tokenizer.json" in err.message


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, seed=0, n_train=20, n_val=5, n_test=2, feature_dim=16)
    lines = (out / "how2sign_realigned_val.csv").read_text().splitlines(keepends=True)
    for i, n in enumerate((100, 120)):  # 101 and 121 tokens; the other three sentences are short
        cells = lines[1 + i].rstrip("\n").split("\t")
        cells[6] = _words(n)
        lines[1 + i] = "\t".join(cells) + "\n"
    (out / "how2sign_realigned_val.csv").write_text("".join(lines))
    return out


def _max_len(report: Path) -> dict[str, object]:
    (f,) = [f for f in json.loads(report.read_text())["findings"] if f["rule"] == "max-len"]
    return dict(f)


def test_data_check_warns_with_the_value_to_set(synth: Path, tmp_path: Path) -> None:
    project = make_project(tmp_path, synth)
    res = study("data", "check", "--study", "t", "--json", "r.json", cwd=project, env={"COLUMNS": "80"})
    assert res.returncode == 0, res.stdout + res.stderr
    f = _max_len(project / "r.json")
    assert (f["severity"], f["split"], f["rows"]) == ("warning", "val", [2, 3])
    assert str(f["message"]).startswith(
        "2 of 5 val references are longer than eval.max_len = 64 tokens (the trainer default), counted with the "
        "study's tokenizer (word-level, "
    )
    assert str(f["message"]).endswith("which lowers val BLEU; the longest: row 3, 121 tokens")
    # the 99th percentile of 9-11, 101 and 121 tokens is above 120
    assert f["fix"] == (
        "raise eval.max_len to the val split's 99th percentile (121 tokens, plus EOS): "
        "`fixed: {eval.max_len: 122}` in study.yaml"
    )
    assert "warning val max-len (2 rows)" in res.stdout
    assert "`fixed: {eval.max_len: 122}`" in res.stdout  # on one line, to copy
    assert not (project / "studies/t/.cache").exists()

    edit(project / "studies/t/study.yaml", "  run.epochs: 1\n", "  run.epochs: 1\n  eval.max_len: 110\n")
    study("data", "check", "--study", "t", "--json", "r.json", cwd=project)
    assert str(_max_len(project / "r.json")["message"]).startswith(
        "1 of 5 val references is longer than eval.max_len = 110 tokens (fixed in study.yaml)"
    )

    space = project / "search_spaces/t.yaml"
    space.write_text(space.read_text() + "  eval.max_len: {type: categorical, choices: [96, 160]}\n")
    study("data", "check", "--study", "t", "--json", "r.json", cwd=project)
    f = _max_len(project / "r.json")
    assert "eval.max_len = 96 tokens (the smallest value the search space gives it)" in str(f["message"])
    assert str(f["fix"]).endswith("raise the lowest eval.max_len of the search space to 122")
