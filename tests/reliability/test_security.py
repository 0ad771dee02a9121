"""Security properties: loopback-only servers, masked passwords, no unpickling, no path escapes,
and YAML read as plain data."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import typer.main
from tests.reliability.helpers import SECRET, STUDY, TouchOnUnpickle, make_project, study
from tests.runner.conftest import fast_spec
from tests.test_storage import PG_URL, require_postgres

from signtune.cli import app
from signtune.data.features import load_feature, resolve_feature_path
from signtune.errors import DataError
from signtune.storage import create_storage

# --- (a) servers bind 127.0.0.1 by default ----------------------------------------------------------


@pytest.mark.parametrize("command", ["dashboard", "mlflow-ui"])
def test_server_commands_default_to_loopback(command: str) -> None:
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    (host,) = [p for p in cmd.params if p.name == "host"]
    assert host.default == "127.0.0.1"
    res = study(command, "--help", cwd=Path.cwd())
    assert res.returncode == 0, res.stderr
    assert "[default: 127.0.0.1]" in " ".join(res.stdout.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port``, read from /proc (no psutil)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                    continue
                if len(address) == 8:  # IPv4, little-endian hex
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def _outward_address() -> str | None:
    """This host's address on its default route (nothing is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.integration
def test_dashboard_listens_on_loopback_only(fast_project: Path) -> None:
    (fast_project / "studies" / "fast" / "study.yaml").write_text(
        fast_spec(trials=1, storage="sqlite:///studies/fast/study.db")
    )
    created = study("create", "--study", "fast", cwd=fast_project)
    assert created.returncode == 0, created.stderr
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fast_project), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [*STUDY, "dashboard", "--study", "fast", "--port", str(port)],
        cwd=fast_project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, f"the dashboard exited early: {proc.communicate()[1]}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline, "the dashboard did not start listening within 60 s"
            time.sleep(0.2)
        assert _listening_addresses(port) == {"127.0.0.1"}
        if shutil.which("ss"):
            ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
            local = {line.split()[3] for line in ss.splitlines() if line.split()[3].endswith(f":{port}")}
            assert local == {f"127.0.0.1:{port}"}, ss
        outward = _outward_address()
        if outward is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((outward, port)) != 0, f"reachable on {outward}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- (b) passwords are masked everywhere -------------------------------------------------------------

LEAKY_SPEC = """\
# A fast plug-in study with passwords where they could leak: study run --study fast
name: {name}
task: fastplug:objective
search_space: ../../search_spaces/fast.yaml
fixed: {{run.epochs: 2, delay: 0.0, run.device: cpu, db_url: "postgresql+psycopg://u:{secret}@h/db"}}
objective: {{metric: score, direction: maximize}}
sampler: {{name: tpe, seed: 0, n_startup_trials: 2}}
pruner: {{name: none}}
budget: {{trials: 3}}
storage: {storage}
tracking: {{uri: "sqlite:///studies/fast/mlflow.db"}}
enqueue:
  - {{x: 0.5}}
"""


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_passwords_never_leak(fast_project: Path, backend: str) -> None:
    name = f"leak{uuid.uuid4().hex[:8]}"
    if backend == "postgresql":
        require_postgres()  # trust auth: the password is accepted and ignored
        storage = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"
    else:
        storage = "sqlite:///studies/fast/study.db"
    sdir = fast_project / "studies" / "fast"
    (sdir / "study.yaml").write_text(LEAKY_SPEC.format(name=name, secret=SECRET, storage=storage))
    try:
        runs = [
            study(*args, cwd=fast_project, timeout=300)
            for args in (
                ("run", "--study", "fast"),
                ("status", "--study", "fast"),
                ("export", "--study", "fast"),
            )
        ]
        for res in runs:
            assert res.returncode == 0, res.stdout + res.stderr
            assert "Traceback" not in res.stdout + res.stderr
            assert SECRET not in res.stdout + res.stderr
        assert "postgres:***@" in runs[0].stderr or backend == "sqlite"

        export = sdir / "export"
        for file in ("best_params.json", "report.html", "trials.csv"):
            assert SECRET not in (export / file).read_text(), file
        best = json.loads((export / "best_params.json").read_text())
        assert best["fixed"]["db_url"] == "postgresql+psycopg://u:***@h/db"  # masked, not dropped

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{sdir / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None
        mlruns = client.search_runs([experiment.experiment_id])
        assert len(mlruns) == 4  # the study's parent run and one per trial
        for run in mlruns:
            assert SECRET not in json.dumps([run.data.params, run.data.tags], default=str)
        (parent,) = [r for r in mlruns if r.data.tags.get("signtune.role") == "study"]
        assert parent.data.params["db_url"] == "postgresql+psycopg://u:***@h/db"

        # Nothing the study wrote holds it either: Optuna's storage, MLflow's store, artifacts.
        for path in sdir.rglob("*"):
            if path.is_file() and path.name != "study.yaml":
                assert SECRET.encode() not in path.read_bytes(), path
    finally:
        if backend == "postgresql":
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=name, storage=create_storage(PG_URL))


# --- (c) nothing is unpickled ---------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip-format", "legacy-format"])
def test_pt_with_a_pickled_object_is_refused_without_running_it(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "clip.pt"
    torch.save({"features": TouchOnUnpickle(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DataError) as info:
        load_feature(path, feature_dim=None)
    text = str(info.value)
    assert "holds a pickled Python object (posix.system)" in text
    assert "weights_only=False" not in text  # torch's own advice (run the file's code) is not passed on
    assert "torch.save(tensor)" in info.value.problems[0].fix
    assert not marker.exists(), "unpickling ran the object's code"


def test_npy_object_array_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "clip.npy"
    np.save(path, np.array([TouchOnUnpickle(marker), 1.0], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"dtype=object\), which are refused \(allow_pickle=False\)"):
        load_feature(path, feature_dim=None)
    assert not marker.exists(), "unpickling ran the object's code"


# --- (d) a manifest id never escapes the features directory -----------------------------------------


@pytest.fixture
def features(tmp_path: Path) -> Path:
    d = tmp_path / "data" / "features"
    d.mkdir(parents=True)
    np.save(tmp_path / "data" / "secret.npy", np.ones((2, 4), np.float32))  # what an escape would reach
    return d


@pytest.mark.parametrize(
    ("clip_id", "why"),
    [
        ("../secret", "contains a path separator"),
        ("..", "contains '..'"),
        ("a..b/../../secret", "contains a path separator"),
        ("/etc/passwd", "contains a path separator"),
        ("..\\secret", "contains a path separator"),
        ("secret\x00", "contains a NUL character"),
        ("", "is empty"),
    ],
    ids=["dotdot-slash", "dotdot", "nested-dotdot", "absolute", "backslash", "nul", "empty"],
)
def test_path_like_ids_are_refused(features: Path, clip_id: str, why: str) -> None:
    with pytest.raises(DataError, match=why):
        resolve_feature_path(features, clip_id)


def test_symlink_out_of_the_features_dir_is_refused(features: Path) -> None:
    (features / "clip_a.npy").symlink_to(features.parent / "secret.npy")
    with pytest.raises(DataError, match="outside the features directory"):
        resolve_feature_path(features, "clip_a")


def test_symlinked_shard_folder_out_of_the_features_dir_is_refused(features: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    np.save(outside / "clip_abcdef.npy", np.ones((2, 4), np.float32))
    (features / "clip_").symlink_to(outside)  # the <id[:5]>/ shard folder
    with pytest.raises(DataError, match="outside the features directory"):
        resolve_feature_path(features, "clip_abcdef")


def test_symlink_inside_the_features_dir_is_followed(features: Path) -> None:
    np.save(features / "real.npy", np.ones((2, 4), np.float32))
    (features / "alias.npy").symlink_to(features / "real.npy")
    assert resolve_feature_path(features, "alias") == features / "alias.npy"


# --- (e) YAML is read as plain data ---------------------------------------------------------------

PYTHON_TAG = '!!python/object/apply:os.system ["touch MARKER"]'


@pytest.mark.parametrize("where", ["study.yaml", "search space", "--set value"])
def test_python_yaml_tags_never_run(tmp_path: Path, where: str) -> None:
    project = make_project(tmp_path, None)
    args: tuple[str, ...] = ("validate", "t")
    if where == "study.yaml":
        spec = project / "studies" / "t" / "study.yaml"
        spec.write_text(spec.read_text().replace("name: t\n", f"name: {PYTHON_TAG}\n"))
    elif where == "search space":
        space = project / "search_spaces" / "t.yaml"
        space.write_text(space.read_text() + f"  model.dropout: {PYTHON_TAG}\n")
    else:
        args = ("train", "--study", "t", "--set", f"optim.lr={PYTHON_TAG}")
    res = study(*args, cwd=project)
    output = res.stdout + res.stderr
    assert res.returncode == 2, output
    assert "Traceback" not in output
    assert "Python tags are refused" in output or "must be a number, but got the string" in output
    assert not (project / "MARKER").exists(), "a YAML tag ran code"
