"""Per-split feature folders through the real commands: data check, data pack, translate."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.data.test_split_folders import per_split
from tests.reliability.helpers import edit, make_project, study

from signtune.data.synth import generate

DATA = Path("studies/t/data")
SPEC = Path("studies/t/study.yaml")
WIDE = {"COLUMNS": "400"}  # table cells wide enough that no message or fix is folded


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, seed=0, n_train=20, n_val=5, n_test=2, feature_dim=16)
    return per_split(out)  # features/train/<id>.npy, features/val/, features/test/


@pytest.fixture
def project(tmp_path: Path, synth: Path) -> Path:
    return make_project(tmp_path, synth)


def _set_features_dir(project: Path, value: str) -> None:
    edit(project / SPEC, "  feature_dim: 16\n", f"  feature_dim: 16\n  features_dir: {value}\n")


def test_data_check_finds_split_folders_and_gives_the_setting(project: Path) -> None:
    res = study("data", "check", "--study", "t", cwd=project, env=WIDE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "data train: 20 clips, 20 feature files read" in res.stdout
    assert "0 errors" in res.stdout and "missing-feature" not in res.stdout
    assert "split-folders" in res.stdout
    assert "features/train/, features/val/, features/test/ do, and are used" in res.stdout
    assert "set `features_dir: features/{split}` under data: in study.yaml to say so" in res.stdout


def test_placeholder_checks_and_packs_per_split(project: Path) -> None:
    _set_features_dir(project, "features/{split}")
    check = study("data", "check", "--study", "t", cwd=project, env=WIDE)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "data val: 5 clips, 5 feature files read" in check.stdout and "split-folders" not in check.stdout
    pack = study("data", "pack", "--study", "t", cwd=project, env=WIDE)
    assert pack.returncode == 0, pack.stderr
    lines = pack.stdout.splitlines()
    assert len(lines) == 3, pack.stdout
    for line, (split, n) in zip(lines, (("train", 20), ("val", 5), ("test", 2)), strict=True):
        assert f"(from studies/t/data/features/{split}): {n} clips" in line and "(no pack yet)" in line


def test_an_unknown_placeholder_is_refused_before_anything_is_written(project: Path) -> None:
    _set_features_dir(project, "features/{splt}")
    res = study("data", "check", "--study", "t", cwd=project, env=WIDE)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        "studies/t/study.yaml: data.features_dir: 'features/{splt}' has a placeholder other than {split}, "
        "the only one there is" in res.stderr
    )
    assert "fix: write e.g. `features_dir: features/{split}`" in res.stderr
    assert not (project / "studies/t/.cache").exists()


def test_features_dir_naming_one_split_gets_the_one_line_fix(project: Path) -> None:
    _set_features_dir(project, "features/train")
    res = study("data", "check", "--study", "t", "--json", "r.json", cwd=project, env=WIDE)
    assert res.returncode == 2, res.stdout
    assert "the val files are in features/val/: set `features_dir: features/{split}`" in res.stdout
    assert "the test files are in features/test/: set `features_dir: features/{split}`" in res.stdout


def _promoted(folder: Path) -> Path:
    """A promoted model folder of an untrained tiny transformer for D = 16 (what it says is not tested)."""
    from safetensors.torch import save_file

    from signtune.config import TrainConfig, apply_overrides
    from signtune.data.tokenizer import train_tokenizer
    from signtune.inference import write_promoted
    from signtune.models import build_model

    small = {"model.d_model": 16, "model.num_heads": 2, "model.num_encoder_layers": 1}
    cfg = apply_overrides(TrainConfig(), {**small, "model.num_decoder_layers": 1, "eval.max_len": 4})
    tok = train_tokenizer(["a boy reads", "the girl paints"], vocab_size=50, lowercase=False)
    model = build_model(cfg.model, feature_dim=16, vocab_size=tok.vocab_size)
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_promoted(folder, cfg, feature_dim=16, vocab_size=tok.vocab_size, tokenizer=tok, architecture=None)
    return folder


def test_translate_finds_the_test_folder_beside_its_manifest(project: Path) -> None:
    model = _promoted(project / "promoted")
    manifest = project / DATA / "how2sign_realigned_test.csv"
    res = study("translate", "--model", str(model), "--manifest", str(manifest), "--beam", "1", cwd=project)
    assert res.returncode == 0, res.stderr
    assert f"features: reading {project / DATA / 'features' / 'test'}" in res.stderr
    ids = [line.split("\t")[3] for line in manifest.read_text().splitlines()[1:]]
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == ["id", *ids]


def test_pt_dicts_and_an_id_duration_text_tsv_per_split(tmp_path: Path) -> None:
    """The old scripts' habits: ``{'features', 'video_id', 'text'}`` .pt files and ``id / duration / text`` TSVs."""
    import numpy as np
    import torch

    project = make_project(tmp_path, None)
    rng = np.random.default_rng(0)
    words = ["the", "boy", "reads", "a", "book", "girl", "paints", "chair"]
    for split, n in (("train", 8), ("val", 3), ("test", 2)):
        folder = project / DATA / "features" / split
        folder.mkdir(parents=True)
        rows = ["id\tduration\ttext\n"]
        for i in range(n):
            clip_id, text = f"{split}_{i:03d}", " ".join(words[(i + k) % 8] for k in range(5)) + "."
            arr = torch.from_numpy(rng.standard_normal((40 + i, 16)).astype(np.float32))
            torch.save({"features": arr, "video_id": f"v{i // 2}", "text": text}, folder / f"{clip_id}.pt")
            rows.append(f"{clip_id}\t{1.5 + i / 10:.2f}\t{text}\n")
        (project / DATA / f"{split}.tsv").write_text("".join(rows))
    data_keys = ["format: tsv", "id_column: id", "text_column: text", "features_dir: features/{split}"]
    data_keys += [f"{split}_manifest: {split}.tsv" for split in ("train", "val", "test")]
    edit(project / SPEC, "  feature_dim: 16\n", "  feature_dim: 16\n" + "".join(f"  {k}\n" for k in data_keys))
    check = study("data", "check", "--study", "t", cwd=project, env=WIDE)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "0 errors" in check.stdout
    assert "data train: 8 clips, 8 feature files read" in check.stdout and "data test: 2 clips, 2" in check.stdout
