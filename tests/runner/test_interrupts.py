"""Stop requests: delivered in interruptible regions, held in protected ones, forced on the third."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from signtune import interrupts


@pytest.fixture
def handlers() -> Iterator[None]:
    interrupts.reset()
    # As a worker does: take SIGINT even when this test run was started with it ignored (a
    # background job, as CI may start it).
    interrupts.install(child=True)
    try:
        yield
    finally:
        interrupts.uninstall()


def test_outside_any_region_a_signal_waits_for_the_checkpoint(handlers: None) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    assert interrupts.pending() and interrupts.exit_code() == 130
    with pytest.raises(KeyboardInterrupt):
        interrupts.checkpoint()


def test_interruptible_region_raises_at_once(handlers: None) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after")  # pragma: no cover - the handler raises before this line
    assert not reached
    assert interrupts.exit_code() == 143


def test_protected_region_finishes_then_raises(handlers: None) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        with interrupts.protected():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("write finished")
        steps.append("not reached")  # pragma: no cover
    assert steps == ["write finished"]


def test_request_from_a_thread_names_its_reason(handlers: None) -> None:
    import threading

    thread = threading.Thread(target=interrupts.request, args=("supervisor_gone",))
    with pytest.raises(KeyboardInterrupt), interrupts.interruptible():
        thread.start()
        thread.join()
        interrupts.sleep(5)  # the request reaches the main thread within the sleep's first step
    assert interrupts.reason() == "supervisor_gone"


def test_third_signal_ends_the_process_at_once() -> None:
    code = textwrap.dedent(
        """
        import os, signal, time
        from signtune import interrupts
        interrupts.install()
        with interrupts.protected():
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            print("not reached", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert done.returncode == 130
    assert "not reached" not in done.stdout
    assert "third interrupt" in done.stderr and "Traceback" not in done.stderr


def test_a_command_started_with_sigint_ignored_keeps_ignoring_it() -> None:
    code = "import signal; from signtune import interrupts; interrupts.install(); print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert done.stdout.strip() == "True"
