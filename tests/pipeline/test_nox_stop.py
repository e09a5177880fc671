"""`nox -s serve` stopped the ways a terminal, `kill`, `timeout` or a supervisor stop it:
nox stops the service first, which answers its requests in flight, flushes its capture
and exits; nothing is left running and no record is lost."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.predictions import store as parts
from tests.conftest import REPO, HeldRequest, free_port, wait_for_http

# Rows a request, requests in flight at the signal. They are held in flight (the last byte
# of each body unsent) until HOLD_SECONDS after the service stopped accepting connections:
# longer than nox's own defaults (0.3 s, then SIGTERM, 0.2 s, SIGKILL) and than uvicorn's
# first poll of its connections (0.1 s), shorter than the service's drain.
ROWS, REQUESTS, HOLD_SECONDS = 100, 6, 1.0


def start_serve(tmp_path: Path, port: int) -> tuple[subprocess.Popen, Path]:
    """`nox -s serve` in a process group of its own, SIGINT handled as a terminal's
    foreground job has it (a job started in the background by a script ignores it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "NOX_"))}
    env.update(
        PORT=str(port),
        PREDICTION_LOG_URL=str(tmp_path / "predictions"),
    )
    log = tmp_path / "nox.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "nox", "-f", str(REPO / "noxfile.py"), "-s", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    return process, log


BODY = json.dumps({"data": [[row % 100] * 784 for row in range(ROWS)]}).encode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.integration
@pytest.mark.parametrize(
    "how",
    [
        pytest.param((os.killpg, signal.SIGINT), id="ctrl-c"),
        pytest.param((os.kill, signal.SIGINT), id="sigint-to-nox"),
        pytest.param((os.kill, signal.SIGTERM), id="sigterm-to-nox"),
        # A supervisor or a user that repeats its SIGTERM while nox waits on the service.
        pytest.param((os.kill, signal.SIGTERM, signal.SIGTERM), id="sigterm-twice-to-nox"),
        pytest.param((os.kill, signal.SIGINT, signal.SIGINT), id="sigint-twice-to-nox"),
        pytest.param((os.kill, signal.SIGINT, signal.SIGHUP), id="sigint-then-sighup-to-nox"),
    ],
)
def test_nox_serve_stops_the_service_before_it_exits_and_loses_no_record(tmp_path, how):
    port = free_port()
    process, log = start_serve(tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    service_pid = None
    try:
        wait_for_http(url + "/v2/health/ready", timeout=300, process=process)
        service_pid = int(re.search(r"Started server process \[(\d+)\]", log.read_text())[1])
        held = [
            HeldRequest(url, "/predict", BODY, {"X-Request-Id": f"stop-{n}"})
            for n in range(REQUESTS)
        ]
        HeldRequest.confirm_received(url)
        send, *signals = how
        for n, signum in enumerate(signals):
            if n:
                time.sleep(1.0)  # nox is waiting for the service (INTERRUPT_SECONDS)
            send(process.pid, signum)
        HeldRequest.wait_until_refused(url, timeout=120)
        time.sleep(HOLD_SECONDS)
        statuses = [request.finish()[0] for request in held]
        returncode = process.wait(timeout=120)
        assert statuses == [200] * REQUESTS, log.read_text()[-3000:]
        assert returncode == 0, log.read_text()[-3000:]
        assert not alive(service_pid), "nox exited and left the service running"
        store = parts.open_store(str(tmp_path / "predictions"))
        ids = Counter(record["id"] for record in parts.read_records(store, "local"))
        expected = {f"stop-{n}-{row}" for n in range(REQUESTS) for row in range(ROWS)}
        assert set(ids) == expected and set(ids.values()) == {1}
    finally:  # only what this test started, by its PID
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        if service_pid is not None and alive(service_pid):
            os.kill(service_pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_every_command_a_session_runs_is_stopped_as_the_noxfile_says():
    """One way to run a command in the noxfile: `run`, with STOP's timeouts (an installing
    `session.run_install` passes them itself)."""
    text = (REPO / "noxfile.py").read_text()
    calls = re.findall(r"^\s+(?:return )?session\.run\(", text, flags=re.MULTILINE)
    assert calls == ["    return session.run("]
    assert text.count("session.run_install(") == 1 and "**STOP," in text


def test_commands_that_change_a_live_service_get_noxs_interrupt_at_once():
    """A GitHub runner cancelling the deploy job signals nox alone and kills the step 10 s
    later ("Workflow cancellation reference"): the release, which puts the service back
    when interrupted (tests/pipeline/test_release.py), must get the interrupt at once, not
    after the INTERRUPT_SECONDS nox leaves a server to drain in. Each session is run with
    a stand-in for nox's Session that records how its commands are to be stopped."""
    probe = textwrap.dedent(
        """
        import json, runpy
        import nox.registry

        noxfile = runpy.run_path("noxfile.py")

        class Session:
            posargs = ["dev"]
            virtualenv = type("Venv", (), {"location": "/nonexistent"})

            def __init__(self):
                self.stops = []

            def run_install(self, *args, **options):
                pass

            def run(self, *args, **options):
                self.stops.append(options["interrupt_timeout"])

        stops = {}
        for name in ("deploy-dev", "deploy-prod", "rollback", "serve", "status"):
            session = Session()
            nox.registry.get()[name](session)
            stops[name] = session.stops
        print(json.dumps([noxfile["INTERRUPT_SECONDS"], stops]))
        """
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    serving, stops = json.loads(shown.stdout)
    assert serving >= 1.0 and stops == {
        "deploy-dev": [0.0],
        "deploy-prod": [0.0],
        "rollback": [0.0],
        "serve": [serving],
        "status": [serving],
    }


@pytest.mark.parametrize(
    ("inherited", "sigint"),
    [
        pytest.param(signal.SIG_DFL, "_interrupted", id="foreground"),
        pytest.param(signal.SIG_IGN, "SIG_IGN", id="script-background-job"),
    ],
)
def test_nox_takes_sigint_only_where_it_did_not_start_ignored(inherited, sigint):
    """A script's background job starts with SIGINT ignored (POSIX shell, 2.11 "Signals
    and Error Handling": an asynchronous list without job control), and nox leaves it so,
    as the README says: SIGTERM and SIGHUP stop it either way."""
    probe = (
        "import runpy, signal\n"
        "runpy.run_path('noxfile.py')\n"
        "name = lambda handler: getattr(handler, '__name__', getattr(handler, 'name', ''))\n"
        "print(name(signal.getsignal(signal.SIGINT)), name(signal.getsignal(signal.SIGTERM)),"
        " name(signal.getsignal(signal.SIGHUP)))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
        check=True,
    ).stdout.split()
    assert shown == [sigint, "_interrupted", "_interrupted"]
