from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_SPACE = """\
# Tiny search space for tests: study run --study tiny
params:
  optim.lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.2}
  schedule.name: {type: categorical, choices: [cosine, linear]}
  schedule.min_lr_ratio: {type: float, low: 0.0, high: 0.1, when: {schedule.name: cosine}}
"""


def tiny_spec(*, trials: int = 4, metric: str = "val_chrf", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        # Tiny study for tests: study run --study tiny
        name: tiny
        task: sign2text
        search_space: ../../search_spaces/tiny.yaml
        data:
          root: data
          feature_dim: 16
          batch_size: 32
          synthetic: {{seed: 1, n_train: 160, n_val: 24, n_test: 16}}
        fixed:
          run.epochs: 3
          model.d_model: 32
          model.num_heads: 2
          model.num_encoder_layers: 1
          model.num_decoder_layers: 1
          eval.max_len: 24
        objective: {{metric: {metric}, direction: maximize}}
        sampler: {{name: tpe, seed: 0, n_startup_trials: 3}}
        pruner: {{name: median, n_startup_trials: 1, n_warmup_steps: 0}}
        budget: {{trials: {trials}, subset: 1.0}}
        enqueue:
          - {{optim.lr: 3.0e-3, model.dropout: 0.0, schedule.name: linear}}
          - {{optim.lr: 1.0e-5, model.dropout: 0.2, schedule.name: linear}}
        {extra}
        """
    )


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with studies/tiny/study.yaml and search_spaces/tiny.yaml; cwd is set to it."""
    (tmp_path / "studies" / "tiny").mkdir(parents=True)
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "tiny.yaml").write_text(TINY_SPACE)
    (tmp_path / "studies" / "tiny" / "study.yaml").write_text(tiny_spec())
    monkeypatch.chdir(tmp_path)
    return tmp_path
