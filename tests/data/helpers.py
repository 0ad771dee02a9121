"""Small, realistic datasets for the data-check tests, built by the tests.

Sentences are combinations of a subject, a verb, an object and a tail whose list lengths are
coprime, so that 24 training sentences cover the whole vocabulary and sentences 0-59 are all
different; clips have about 10 frames per word, so the clean data raises no warning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from signtune.config import DataConfig

DIM = 8
SUBJECTS = ["The boy", "A girl", "My teacher", "Her father", "The old doctor", "Our neighbour"]
VERBS = ["reads", "paints", "finds", "cleans", "carries"]
OBJECTS = ["a red book", "the chair", "two small boxes", "some bread"]
TAILS = ["every morning.", "in the garden.", "after school."]
H2S_HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
SPLIT_START = {"train": 0, "val": 30, "test": 40}  # sentence numbers: the splits never share one


def sentence(k: int) -> str:
    return f"{SUBJECTS[k % 6]} {VERBS[k % 5]} {OBJECTS[k % 4]} {TAILS[k % 3]}"


@dataclass
class Dataset:
    """A dataset on disk: ``root`` holds the manifests and ``features_dir``."""

    root: Path
    format: Literal["how2sign", "ssvp"]
    features_dir: str
    ids: dict[str, list[str]] = field(default_factory=dict)  # split -> ids, in manifest order
    files: dict[str, Path] = field(default_factory=dict)  # id -> feature file

    def manifest(self, split: str) -> Path:
        name = f"{split}_features.tsv" if self.format == "ssvp" else f"how2sign_realigned_{split}.csv"
        return self.root / name

    def cfg(self, **overrides: Any) -> DataConfig:
        base = DataConfig(
            root=str(self.root),
            format=self.format,
            train_manifest=self.manifest("train").name,
            val_manifest=self.manifest("val").name,
            test_manifest=self.manifest("test").name,
            features_dir=self.features_dir,
            feature_dim=DIM,
        )
        return dataclasses.replace(base, **overrides)

    def lines(self, split: str) -> list[str]:
        return self.manifest(split).read_text(encoding="utf-8").splitlines(keepends=True)

    def write_lines(self, split: str, lines: list[str]) -> None:
        self.manifest(split).write_text("".join(lines), encoding="utf-8")

    def save(self, clip_id: str, arr: np.ndarray) -> Path:
        """Replace a clip's features (keeping its file type)."""
        path = self.files[clip_id]
        if path.suffix == ".pt":
            torch.save(torch.from_numpy(np.asarray(arr)), path)
        else:
            np.save(path, arr)
        return path


def write_dataset(
    root: Path,
    *,
    format: Literal["how2sign", "ssvp"] = "how2sign",
    sizes: tuple[int, int, int] = (24, 6, 4),
    per_video: int = 3,
) -> Dataset:
    """Write a clean dataset: How2Sign (flat .npy) or SSVP-SLT (nested .pt under features/0)."""
    rng = np.random.default_rng(0)
    ds = Dataset(root, format, "features/0" if format == "ssvp" else "features")
    features = root / ds.features_dir
    features.mkdir(parents=True)
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        lines = [] if format == "ssvp" else [H2S_HEADER]
        ds.ids[split] = []
        for i in range(n):
            k = SPLIT_START[split] + i
            text = sentence(k)
            frames = 10 * len(text.split()) + k % 3
            video = f"{split[:2]}{k // per_video:03d}xYz"
            clip_id = f"{video}_{k % per_video}-1-rgb_front" if format == "how2sign" else f"{video}-{k:04d}"
            arr = rng.standard_normal((frames, DIM)).astype(np.float32)
            if format == "ssvp":
                path = features / clip_id[:5] / f"{clip_id}.pt"
                path.parent.mkdir(exist_ok=True)
                torch.save(torch.from_numpy(arr), path)
                lines.append(f"{clip_id}.mp4\t{frames}\t{text}\n")  # SSVP-SLT drops the name's extension
            else:
                path = features / f"{clip_id}.npy"
                np.save(path, arr)
                start = 1.5 * i
                lines.append(
                    f"{video}\t{video}-1-rgb_front\t{video}_{k % per_video}\t{clip_id}\t{start:.2f}\t"
                    f"{start + frames / 24:.2f}\t{text}\n"
                )
            ds.ids[split].append(clip_id)
            ds.files[clip_id] = path
        ds.write_lines(split, lines)
    return ds
