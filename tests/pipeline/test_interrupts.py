"""pipeline.interrupts: the first signal interrupts, later ones are ignored, and a
`deferred` block takes the first one only once it is done. Real signals, sent to this
process (its main thread runs Python's handlers: the `signal` module's documentation)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pipeline import interrupts, terraform


@pytest.fixture
def foreground():
    """SIGINT as a process started in the foreground has it."""
    assert threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler at its next check


def test_the_first_signal_interrupts_and_later_ones_are_ignored(foreground):
    done = []
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        try:
            send(signal.SIGTERM)
        finally:
            send(signal.SIGTERM)  # a runner's second signal, while cleaning up
            send(signal.SIGINT)
            done.append("cleaned up")
    assert done == ["cleaned up"]


def test_a_deferred_block_finishes_and_the_interrupt_comes_after_it(foreground):
    steps = []
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            send(signal.SIGINT)
            steps.append("written")
            with interrupts.deferred():  # nested: only the outermost end raises
                steps.append("nested")
            steps.append("whole")
        steps.append("not reached")
    assert steps == ["written", "nested", "whole"]


def test_a_deferred_block_that_fails_raises_the_interrupt_from_its_error(foreground):
    with interrupts.handled():
        with pytest.raises(KeyboardInterrupt) as raised, interrupts.deferred():
            send(signal.SIGHUP)
            raise OSError("the write failed")
        assert isinstance(raised.value.__cause__, OSError)
        with interrupts.deferred():  # nothing is left pending
            pass


def test_outside_a_command_nothing_is_held_or_left_behind(foreground):
    handler = signal.getsignal(signal.SIGTERM)
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        send(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with interrupts.deferred():  # no command, no state: nothing raised
        pass


def test_sigint_stays_ignored_where_it_started_ignored():
    """A script's background job starts with SIGINT ignored (POSIX shell, 2.11)."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handled():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            send(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_worker_threads_deferred_block_holds_nothing_of_the_main_thread(foreground):
    entered = threading.Event()
    release = threading.Event()

    def worker():
        with interrupts.deferred():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        thread.start()
        entered.wait(5)
        try:
            send(signal.SIGINT)  # not held: the worker's block is not the command's
        finally:
            release.set()
            thread.join(5)


def test_an_interrupted_terraform_command_ends_before_the_interrupt_is_taken(
    foreground, tmp_path, monkeypatch
):
    """Terraform stops by itself on the terminal's Ctrl-C, saving its state; the pipeline
    waits for it, rather than leaving and closing the pipes terraform's next line of output
    would die on (SIGPIPE), mid-apply. A stand-in terraform that takes a second."""
    fake, saved = tmp_path / "terraform", tmp_path / "saved"
    fake.write_text(f"#!/bin/sh\nsleep 1\necho 'Apply complete!'\necho state > '{saved}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("TERRAFORM", str(fake))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        timer.start()
        terraform._cmd(tmp_path, "apply")
    timer.join()
    assert saved.read_text() == "state\n"
