"""Error types. Every user-facing error says where, what rule, which value, and the fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem found in user input.

    Attributes:
        where: the file and key path or row, e.g. ``studies/demo/study.yaml: budget.trials``.
        message: the rule and the offending value, e.g. ``must be >= 1, but got 0``.
        fix: what the user should do about it.
    """

    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class SigntuneError(Exception):
    """Base class of errors caused by user input; the CLI maps them to exit code 2."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(where="signtune", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(SigntuneError):
    """A study spec, search space, override or CLI flag is invalid (all problems at once)."""


class DataError(SigntuneError):
    """A manifest or feature file is missing, unreadable or malformed."""


class StudyError(SigntuneError):
    """The study or its storage is not in a state the command can work with.

    Always built from ``Problem``s: the place, the rule and value, and the fix.
    """

    def __init__(self, problems: list[Problem] | Problem) -> None:
        super().__init__(problems)


class DeviceLost(StudyError):
    """A trial hit a CUDA error that leaves the process's CUDA context unusable (not an OOM)."""


class StopTrial(Exception):
    """Raised inside a trial to end it early without it counting as a crash.

    ``reason`` is recorded in the trial's user attrs (``pruned``, ``diverged``, ``timeout``...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Diverged(StopTrial):
    """The loss became NaN or infinite."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("diverged", detail)
