"""How `study run` shows its progress: a bar in a terminal, lines in a log, JSON for scripts.

- ``bar``: a rich progress bar on stderr (a terminal);
- ``lines``: when stderr is not a terminal (``nohup ... > log 2>&1 &``, a cluster job): one
  timestamped line per finished trial on stdout (number, state, value, epochs, time, best so
  far, and the reason of a pruned or failed trial), and a heartbeat line every
  ``--heartbeat-every`` seconds while trials run, so a slow study is told from a hung one;
- ``json``: ``--json-lines``: one JSON object per event on stdout (``start``, ``trial``,
  ``heartbeat``, ``end``), nothing else there;
- ``quiet``: ``--quiet``: errors and the final line only.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

if TYPE_CHECKING:
    from signtune.runner import RunSummary

Mode = Literal["bar", "lines", "json", "quiet"]


def choose_mode(*, quiet: bool, json_lines: bool, terminal: bool) -> Mode:
    if json_lines:
        return "json"
    if quiet:
        return "quiet"
    return "bar" if terminal else "lines"


class Reporter:
    """Receives the runner's events and shows them in one ``Mode``; thread-safe."""

    def __init__(
        self, mode: Mode, *, out: Console, err: Console, metric: str, epochs: int, heartbeat_s: float = 120.0
    ) -> None:
        self.mode = mode
        self.out = out
        self.err = err
        self.metric = metric
        self.epochs = epochs
        self.heartbeat_s = heartbeat_s
        self.name = ""
        self.total = 0
        self.finished = 0
        self.best: float | None = None
        self.best_trial: int | None = None
        self.status = ""
        self.last_epoch: dict[int, tuple[int, float]] = {}  # trial -> (epoch, when)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._bar: Any = None
        self._task: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, name: str, finished: int, total: int) -> None:
        self.total, self.finished = total, finished
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("best {task.fields[best]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.err,
                transient=False,
            )
            self._task = self._bar.add_task(name, total=total, best="-", status="", completed=finished)
            self._bar.start()
        self.name = name
        if self.mode in ("lines", "json") and self.heartbeat_s > 0:
            self._beat = threading.Thread(target=self._heartbeats, name="signtune-progress", daemon=True)
            self._beat.start()

    def close(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2)
        if self._bar is not None:
            self._bar.stop()

    def end(self, summary: RunSummary) -> None:
        if self.mode == "json":
            self._json(
                {
                    "event": "end",
                    "finished": summary.finished,
                    "total": summary.total,
                    "started": summary.started,
                    "best": summary.best_value,
                    "best_trial": summary.best_trial,
                    "wall_time_s": round(summary.wall_time_s, 1),
                    "stopped_by": summary.stopped_by,
                }
            )

    # --- runner events ---------------------------------------------------------------------

    def on_start(self, finished: int, total: int) -> None:
        with self._lock:
            self.finished, self.total = finished, total
        if self._bar is not None:
            self._bar.update(self._task, completed=finished)
        elif self.mode == "json":
            self._json({"event": "start", "study": self.name, "finished": finished, "total": total})
        elif self.mode == "lines":
            self._line(f"{self.name}: {finished}/{total} finished trials; running until {total}")

    def on_epoch(self, number: int, epoch: int, metrics: dict[str, float]) -> None:
        with self._lock:
            self.last_epoch[number] = (epoch, time.monotonic())
        if self._bar is not None:
            value = metrics.get(self.metric, float("nan"))
            self._bar.update(
                self._task, status=f"trial {number} epoch {epoch}/{self.epochs}: {self.metric} {value:.2f}"
            )

    def on_progress(self, finished: int, best: float | None, status: str) -> None:
        with self._lock:
            self.finished, self.best, self.status = finished, best, status
        if self._bar is not None:
            self._bar.update(
                self._task, completed=finished, best=f"{best:.2f}" if best is not None else "-", status=status
            )

    def on_trial(self, trial: FrozenTrial, best: float | None, best_trial: int | None) -> None:
        with self._lock:
            self.best, self.best_trial = best, best_trial
            self.last_epoch.pop(trial.number, None)
        if self.mode not in ("lines", "json"):
            return
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, "failed")
        from signtune.study import objective_value

        value = objective_value(trial)
        epochs = trial.user_attrs.get("epochs_run", len(trial.intermediate_values))
        wall = trial.user_attrs.get("wall_time_s")
        reason = str(trial.user_attrs.get("reason", "")) if state != "complete" else ""
        detail = str(trial.user_attrs.get("reason_detail") or trial.user_attrs.get("error") or "").splitlines()
        if self.mode == "json":
            self._json(
                {
                    "event": "trial",
                    "number": trial.number,
                    "state": state,
                    "value": value,
                    "epochs": epochs,
                    "wall_time_s": wall,
                    "best": best,
                    "best_trial": best_trial,
                    "reason": reason or None,
                    "detail": detail[0][:300] if detail else None,
                }
            )
            return
        shown = f"{self.metric} {value:.2f}" if isinstance(value, int | float) else f"{self.metric} -"
        took = f"{float(wall):.1f}s" if isinstance(wall, int | float) else "-"
        best_text = f"best {best:.2f} (#{best_trial})" if best is not None else "best -"
        why = f"  reason {reason}" + (f": {detail[0][:120]}" if detail else "") if reason else ""
        self._line(f"trial {trial.number} {state}  {shown}  {epochs}/{self.epochs} epochs  {took}  {best_text}{why}")

    # --- output ----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                now = time.monotonic()
                running = {n: (e, round(now - t)) for n, (e, t) in self.last_epoch.items()}
                finished, total, best, status = self.finished, self.total, self.best, self.status
            if self.mode == "json":
                self._json(
                    {
                        "event": "heartbeat",
                        "finished": finished,
                        "total": total,
                        "best": best,
                        "running": {str(n): {"epoch": e, "since_report_s": s} for n, (e, s) in running.items()},
                        "status": status,
                    }
                )
                continue
            parts = [f"still running: {finished}/{total} finished", f"best {best:.2f}" if best is not None else ""]
            parts += [
                f"trial {n} at epoch {e}/{self.epochs} ({s}s since its last report)" for n, (e, s) in running.items()
            ]
            if status:
                parts.append(status)
            self._line(", ".join(p for p in parts if p))

    def _line(self, text: str) -> None:
        with self._lock:
            self.out.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, markup=False, soft_wrap=True)

    def _json(self, event: dict[str, Any]) -> None:
        event = {"time": round(time.time(), 3), **event}
        with self._lock:
            self.out.file.write(json.dumps(event, default=str) + "\n")
            self.out.file.flush()
