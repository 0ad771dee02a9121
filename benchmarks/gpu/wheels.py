"""The wheels an air-gapped GPU node lacks: fetch them here, install them there.

    python -m benchmarks.gpu.wheels fetch                      # with network: into .whl/ (git-ignored)
    python -m benchmarks.gpu.wheels install --target DIR       # on the node: no network, no pip needed

The pins live in ``benchmarks/gpu/wheels.txt`` (the versions CI runs). ``fetch`` runs
``pip download --no-deps --only-binary=:all:`` for Python 3.12 on manylinux x86_64, removes any
other wheel from the folder, and fails when the folder is over ``BUDGET_MIB``. ``install``
unpacks each wheel into ``--target`` (what ``pip install --target`` does for these packages,
without console scripts), skipping ``if-older`` pins the node already has at that version or
newer, and any pin already installed at exactly its version. Put ``--target`` first on
``PYTHONPATH`` afterwards (``check.sh`` does).

Only the standard library is used here: this runs before optuna and the rest are on the path.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PINS = HERE / "wheels.txt"
ROOT = HERE.parents[1]
DEFAULT_DIR = ROOT / ".whl"
BUDGET_MIB = 40.0
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    policy: str  # "always" | "if-older"

    @property
    def key(self) -> str:
        """The name as wheel file names spell it (PEP 503 normalised, ``-`` as ``_``)."""
        return normalise(self.name)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def read_pins(path: Path = PINS) -> list[Pin]:
    """``name==version policy`` lines; ``#`` starts a comment.

    Raises:
        ValueError: a line that is not ``name==version`` followed by ``always`` or ``if-older``.
    """
    pins = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or "==" not in parts[0] or parts[1] not in ("always", "if-older"):
            raise ValueError(f"{path}:{number}: {raw!r} is not `name==version always|if-older`")
        name, version = parts[0].split("==", 1)
        pins.append(Pin(name, version, parts[1]))
    return pins


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version (``4.16.0`` -> (4, 16, 0); ``2.1.9rc1`` -> (2, 1, 9))."""
    release = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(x) for x in release.group(0).split(".")) if release else ()


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def wheel_for(pin: Pin, folder: Path) -> Path | None:
    """The wheel of ``pin`` in ``folder``, if there is one."""
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        if normalise(name) == pin.key and version == pin.version:
            return path
    return None


def fetch(dest: Path = DEFAULT_DIR, *, python: str = "3.12", pins: list[Pin] | None = None) -> list[Path]:
    """Download exactly the pinned wheels into ``dest``; remove any other wheel there.

    Raises:
        RuntimeError: pip failed, a pin has no wheel afterwards, or the folder is over ``BUDGET_MIB``.
    """
    pins = read_pins() if pins is None else pins
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest),
           *(f"{p.name}=={p.version}" for p in pins)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wanted = []
    for pin in pins:
        wheel = wheel_for(pin, dest)
        if wheel is None:
            raise RuntimeError(f"no wheel of {pin.name}=={pin.version} in {dest} after pip download")
        wanted.append(wheel)
    for path in dest.glob("*.whl"):
        if path not in wanted:
            path.unlink()
    size = sum(p.stat().st_size for p in wanted) / 2**20
    if size > BUDGET_MIB:
        raise RuntimeError(f"{dest} holds {size:.1f} MiB of wheels, over the {BUDGET_MIB:g} MiB budget")
    return wanted


def unpack(wheel: Path, target: Path) -> None:
    """Unpack ``wheel`` into ``target`` as ``pip install --target`` lays it out (no scripts)."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    for data in target.glob("*.data"):
        for scheme in ("purelib", "platlib"):
            src = data / scheme
            if src.is_dir():
                for item in src.iterdir():
                    dst = target / item.name
                    if dst.is_dir() and item.is_dir():
                        shutil.copytree(item, dst, dirs_exist_ok=True)
                    else:
                        shutil.move(str(item), str(dst))
        shutil.rmtree(data)


def plan_install(pins: list[Pin], have: dict[str, str | None]) -> list[tuple[Pin, str]]:
    """``(pin, why)`` for each pin to install, given the versions the node ``have``s (None: missing)."""
    todo = []
    for pin in pins:
        current = have.get(pin.name)
        if current == pin.version:
            continue
        if pin.policy == "if-older" and current is not None and version_tuple(current) >= version_tuple(pin.version):
            continue
        todo.append((pin, "missing" if current is None else f"node has {current}"))
    return todo


def install(src: Path, target: Path, *, pins: list[Pin] | None = None) -> list[str]:
    """Unpack the pins the node needs from ``src`` into ``target``; returns what was installed.

    Raises:
        FileNotFoundError: a pin the node needs has no wheel in ``src`` (names the fetch command).
    """
    pins = read_pins() if pins is None else pins
    todo = plan_install(pins, {p.name: installed(p.name) for p in pins})
    missing = [f"{p.name}=={p.version} ({why})" for p, why in todo if wheel_for(p, src) is None]
    if missing:
        raise FileNotFoundError(
            f"{src} has no wheel for {', '.join(missing)}; on a machine with network, run "
            "`python -m benchmarks.gpu.wheels fetch` in the repository and bring .whl/ along"
        )
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for pin, why in todo:
        wheel = wheel_for(pin, src)
        assert wheel is not None
        unpack(wheel, target)
        done.append(f"{pin.name}=={pin.version} ({why})")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download the pinned wheels (needs network)")
    f.add_argument("--dest", type=Path, default=DEFAULT_DIR)
    f.add_argument("--python", default="3.12", help="the node's Python version")
    i = sub.add_parser("install", help="unpack the wheels the node lacks into --target (no network)")
    i.add_argument("--src", type=Path, default=DEFAULT_DIR)
    i.add_argument("--target", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "fetch":
            wheels = fetch(args.dest, python=args.python)
            for w in wheels:
                print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
            total = sum(w.stat().st_size for w in wheels) / 2**20
            print(f"{total:7.2f} MiB  in all, {len(wheels)} wheels in {args.dest}")
        else:
            done = install(args.src, args.target)
            print(f"installed into {args.target}: {', '.join(done)}" if done else "wheels: nothing to install",
                  file=sys.stderr)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
