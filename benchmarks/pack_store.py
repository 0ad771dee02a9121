"""Packed feature store: a worker loading N clips from the pack against reading N files.

    python -m benchmarks.pack_store                         # 31000 clips, T 120-180, D 768 (14 GB a copy)
    python -m benchmarks.pack_store --clips 3100            # a tenth (what the suite runs without --full)
    python -m benchmarks.pack_store --clips 200 --dim 32 --no-cold   # seconds

Generates ``--clips`` synthetic clips (float32 ``.npy``, T uniform in ``--frames`` +- 30, D =
``--dim``) and How2Sign-style manifests (90% train, 5% val, 5% test) in a work folder that is
deleted at the end, even on error. Then, in one process, each step with nothing of the data
in memory (``signtune.data.dataset.clear_cache``, as in a fresh worker):

(a) per file: ``load_splits`` with ``data.pack: off``, what every worker paid before the pack:
    the manifests, the look-up, ``np.load`` and the checks of every file, and a private copy
    of every clip in the process;
(b) pack build, once per features set: ``pack_features`` reads and checks every file and
    writes the pack;
(c) packed load, a worker start: ``load_splits`` with ``data.pack: auto`` on the built pack:
    the manifests, the index, one ``stat`` per source file, a view per clip; and the stat
    check alone;
(d) a full read pass through the pack (every view summed), so the lazy memory map is not
    flattered: (c) + (d) is what reading every byte once costs.

Cold: ``sync; echo 3 > /proc/sys/vm/drop_caches`` (page cache, dentries and inodes) before
each cold step; it needs root, and the result says whether it worked. Warm: the same step
repeated at once, with whatever the page cache kept (at full size the sources and the pack,
14 GB each, do not both fit in 23 GB of RAM, so "warm" per-file reads are partly cold).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_LOAD_S = 3.0
TARGET_RATIO = 10.0
TARGET_CLIPS = 31000
SPREAD = 30  # T is uniform in [frames - SPREAD, frames + SPREAD]
HEADER = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
WORDS = ["we", "sign", "the", "story", "of", "a", "small", "dog", "who", "finds", "home", "again", "after", "rain"]


def generate(where: Path, *, clips: int, frames: int, dim: int, seed: int = 0) -> dict[str, Any]:
    """``clips`` feature files and the three manifests in ``where``; returns the data's facts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feats = where / "features"
    feats.mkdir(parents=True)
    pool = rng.standard_normal((4 * (frames + SPREAD), dim), dtype=np.float32)  # slices of it, shifted per clip
    n_val = n_test = max(1, clips // 20)
    n_train = clips - n_val - n_test
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    total_frames = 0
    started = time.perf_counter()
    for i in range(clips):
        t = int(rng.integers(max(1, frames - SPREAD), frames + SPREAD + 1))
        start = int(rng.integers(0, len(pool) - t))
        clip_id = f"clip{i:06d}-{i % 7}"
        np.save(feats / f"{clip_id}.npy", pool[start : start + t] + np.float32(i % 1000) / 1000)
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        text = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 8)).capitalize() + "."
        lines[split].append(f"v{i}\tv{i}.mp4\t{i}\t{clip_id}\t0.0\t1.0\t{text}\n")
        total_frames += t
    for split, rows in lines.items():
        (where / f"how2sign_realigned_{split}.csv").write_text(HEADER + "".join(rows), encoding="utf-8")
    os.sync()
    return {
        "clips": clips,
        "splits": {k: len(v) for k, v in lines.items()},
        "frames": total_frames,
        "dim": dim,
        "bytes": total_frames * dim * 4,
        "write_s": time.perf_counter() - started,
    }


def drop_caches() -> bool:
    """Write back and drop the page cache, dentries and inodes; False when not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    w = time.perf_counter()
    out = fn()
    return time.perf_counter() - w, out


def _meminfo(key: str) -> int:
    """A /proc/meminfo figure in bytes (``MemTotal``, ``MemAvailable``); 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(where: Path, *, dim: int, cold: bool) -> dict[str, Any]:
    """Steps (a)-(d) on the data in ``where`` (its ``study/.cache`` gets the pack)."""
    import numpy as np

    from signtune.config import DataConfig
    from signtune.data import dataset
    from signtune.data import pack as packed
    from signtune.data.dataset import load_splits, pack_features

    root, cache = where / "data", where / "study" / ".cache"
    cfg = {mode: DataConfig(root=str(root), feature_dim=dim, pack=mode) for mode in ("off", "auto")}
    out: dict[str, Any] = {"cold": cold, "cold_note": ""}

    def fresh(drop: bool) -> None:
        dataset.clear_cache()
        gc.collect()
        if drop and not drop_caches():
            out["cold"], out["cold_note"] = False, "dropping the page cache was refused (not root?): every run is warm"

    def load(mode: str) -> list[Any]:
        return [s for s in load_splits(cfg[mode], root, cache_dir=cache) if s is not None]

    def read_pass(splits: list[Any]) -> float:
        return float(sum(float(f.sum(dtype=np.float64)) for s in splits for f in s.features))

    # (a) per file, cold then warm; a private copy of every clip, so only when it fits in memory
    need = sum(f.stat().st_size for f in (root / "features").iterdir())
    out["per_file"] = {}
    if need > _meminfo("MemAvailable") - 2 * 2**30:
        free = _meminfo("MemAvailable") / 2**30
        out["per_file"]["skipped"] = f"needs {need / 2**30:.1f} GiB of memory, {free:.1f} GiB available"
    else:
        for label, drop in (("cold", cold), ("warm", False)):
            fresh(drop)
            s, splits = _timed(lambda: load("off"))
            out["per_file"][label] = s
            out["checksum"] = read_pass(splits)
            del splits
    # (b) the pack, built once
    fresh(cold)
    s, (info,) = _timed(lambda: pack_features(cfg["auto"], root, cache))  # one features folder: one pack
    out["build_s"], out["pack_bytes"], out["pack_clips"] = s, info.bytes, info.clips
    out["pack_frames"], out["built"] = info.frames, info.built
    # (c) + (d) a worker start on the built pack, then every byte read once; cold, then warm
    for label, drop in (("cold", cold), ("warm", False)):
        fresh(drop)
        w = time.perf_counter()
        splits = load("auto")
        loaded = time.perf_counter()
        total = read_pass(splits)
        out[f"packed_{label}"] = {"load_s": loaded - w, "read_pass_s": time.perf_counter() - loaded}
        if "checksum" in out and not np.isclose(total, out["checksum"], rtol=1e-9):
            raise RuntimeError(f"the pack's data differ from the files': sum {total} != {out['checksum']}")
        del splits
    # the stat check alone (one stat per source file against the index), cold and warm
    all_ids = [i for s in load(mode="auto") for i in s.ids]
    for label, drop in (("cold", cold), ("warm", False)):
        fresh(drop)
        pack = packed.open_pack(packed.pack_folder(cache, root / "features"))
        assert pack is not None
        s, reason = _timed(lambda: pack.stale(root / "features", all_ids, dim))  # noqa: B023
        if reason is not None:
            raise RuntimeError(f"the pack went stale during the benchmark: {reason}")
        out[f"stat_{label}_s"] = s
    fresh(False)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=TARGET_CLIPS)
    ap.add_argument("--frames", type=int, default=150, help=f"mean T; T is uniform in +-{SPREAD}")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--work", type=Path, default=None, help="where to generate (a temp folder; deleted at the end)")
    ap.add_argument("--no-cold", action="store_true", help="do not drop the page cache (every run warm)")
    args = ap.parse_args(argv)

    from benchmarks.common import command, loadavg

    result: dict[str, Any] = {"command": command("pack_store", argv), "load_before": loadavg()}
    result["ram_bytes"] = _meminfo("MemTotal")
    parent = args.work or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    est = args.clips * args.frames * args.dim * 4
    free = shutil.disk_usage(parent).free
    if free < 2.3 * est + 2**30:  # sources + pack, and a second pack while a rebuild is written
        raise SystemExit(f"needs about {2.3 * est / 2**30:.0f} GiB free in {parent}, has {free / 2**30:.0f} GiB")
    where = Path(tempfile.mkdtemp(prefix="signtune-pack-", dir=parent))
    try:
        print(f"generating {args.clips} clips (~{est / 2**30:.1f} GiB) in {where} ...", flush=True)
        result["data"] = generate(where / "data", clips=args.clips, frames=args.frames, dim=args.dim)
        print(f"  written in {result['data']['write_s']:.0f} s; measuring ...", flush=True)
        result.update(measure(where, dim=args.dim, cold=not args.no_cold))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    result["load_after"] = loadavg()
    result["date"] = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    _judge(result)
    _print(result)
    return result


def _judge(r: dict[str, Any]) -> None:
    state = "cold" if r["cold"] else "warm"
    load = r[f"packed_{state}"]["load_s"]
    per_file = r["per_file"].get(state)
    r["ratio"] = {k: r["per_file"][k] / r[f"packed_{k}"]["load_s"] for k in ("cold", "warm") if k in r["per_file"]}
    r["ratio_with_read"] = {
        k: r["per_file"][k] / (r[f"packed_{k}"]["load_s"] + r[f"packed_{k}"]["read_pass_s"])
        for k in ("cold", "warm")
        if k in r["per_file"]
    }
    r["target"] = f"{TARGET_CLIPS} clips load in <= {TARGET_LOAD_S:g} s, per file >= {TARGET_RATIO:g}x longer"
    r["judged_on"] = state
    r["full_size"] = r["data"]["clips"] >= TARGET_CLIPS
    fast = per_file is not None and load <= TARGET_LOAD_S and per_file / load >= TARGET_RATIO
    r["met"] = bool(r["full_size"] and fast)


def label(r: dict[str, Any], k: str) -> str:
    """``cold``/``warm``, or what the two runs were when the cache was not dropped."""
    return k if r["cold"] else {"cold": "first run (cache not dropped)", "warm": "second run"}[k]


def _print(r: dict[str, Any]) -> None:
    d = r["data"]
    print(f"data: {d['clips']} clips, {d['frames']} frames, D {d['dim']}, {d['bytes'] / 2**30:.2f} GiB")
    print(f"cache: {'dropped before each cold step' if r['cold'] else 'warm only'} {r['cold_note']}")
    for k in ("cold", "warm"):
        if k in r["per_file"]:
            print(f"(a) per file, {label(r, k)}: {r['per_file'][k]:.2f} s")
    if "skipped" in r["per_file"]:
        print(f"(a) per file: skipped, {r['per_file']['skipped']}")
    print(f"(b) pack build: {r['build_s']:.2f} s ({r['pack_bytes'] / 2**30:.2f} GiB)")
    for k in ("cold", "warm"):
        p = r[f"packed_{k}"]
        print(
            f"(c) packed load, {label(r, k)}: {p['load_s']:.2f} s (stat check alone {r[f'stat_{k}_s']:.2f} s); "
            f"(d) read pass {p['read_pass_s']:.2f} s"
        )
    for k, v in r["ratio"].items():
        print(
            f"ratio per file / packed load, {label(r, k)}: {v:.1f}x; with the read pass: {r['ratio_with_read'][k]:.1f}x"
        )
    print(
        f"target ({r['target']}): {'MET' if r['met'] else 'NOT MET'}"
        + ("" if r["full_size"] else f" (not judged: {d['clips']} < {TARGET_CLIPS} clips)")
    )


if __name__ == "__main__":
    main()
