"""Start the contenders on 127.0.0.1, wait until they answer, measure them, and stop them.

`Processes` owns every process the bench starts and stops them all when its
`with` block ends, however it ends. Each server is pinned to one core with
`taskset` (a stand-in for a remote service also runs at idle priority);
its output goes to a log file whose tail is shown if it fails.
"""

from __future__ import annotations

import compileall
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline import REPO

READY_POLL_SECONDS = 0.005
STOP_TIMEOUT_SECONDS = 20
# A server is quiet once it used at most one clock tick of CPU (10 ms) in this long.
QUIET_WINDOW_SECONDS = 0.5
QUIET_TIMEOUT_SECONDS = 15


class ProcessError(RuntimeError):
    """A contender did not start, did not answer, or died."""


def compile_bytecode() -> list[Path]:
    """Compile every module a server may import (this environment's packages and the
    repository's), as the image's `pip install` does at build time; the directories.

    A server started without bytecode compiles each module from source as it imports it,
    as here where PYTHONDONTWRITEBYTECODE is set and the venv was installed without it:
    `import service.app` took 1.4 s of CPU then against 0.6 s, which "ready after start"
    would have counted. Files already compiled are skipped (compileall compares each with
    its source's time).
    """
    paths = sysconfig.get_paths()
    directories = [Path(d) for d in dict.fromkeys((paths["purelib"], paths["platlib"]))]
    directories += [REPO / "service", REPO / "pipeline", REPO / "bench"]
    for directory in directories:
        # quiet=2: some packages ship files that are not meant to compile (templates, test
        # data); those are never imported, and the rest is compiled all the same.
        compileall.compile_dir(directory, quiet=2, workers=0)
    return directories


def require_scheduling_tools() -> None:
    """`taskset` (pinning) and `chrt` (idle priority), both from util-linux."""
    missing = [tool for tool in ("taskset", "chrt") if shutil.which(tool) is None]
    if missing:
        raise ProcessError(
            f"{' and '.join(missing)} not installed: install util-linux "
            "(`sudo apt-get install util-linux`)"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` (all its threads) has used so far, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ProcessError(f"unexpected VmRSS unit {unit!r} in /proc/{pid}/status")
            return int(value) * 1024
    raise ProcessError(f"/proc/{pid}/status has no VmRSS line")


def wait_quiet(pid: int, timeout: float = QUIET_TIMEOUT_SECONDS) -> float:
    """Wait until `pid` used at most one clock tick of CPU in QUIET_WINDOW_SECONDS (its
    last requests answered, capture's last records encoded and stored), for at most
    `timeout` seconds; the seconds waited."""
    started = time.perf_counter()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = cpu_seconds(pid)
    while time.perf_counter() - started < timeout:
        time.sleep(QUIET_WINDOW_SECONDS)
        now = cpu_seconds(pid)
        if now - before <= tick + 1e-9:
            break
        before = now
    return time.perf_counter() - started


@dataclass
class Server:
    """One started process: its URL on 127.0.0.1, and how long it took to answer."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    ready_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with {self.process.returncode}; its log ends with:\n"
                + self.log_tail()
            )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_SECONDS."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        return self.process.returncode


def answer(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET to `url`, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Processes:
    """Every process the bench started; all of them are stopped when the block ends."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._servers: list[Server] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info) -> None:
        for server in reversed(self._servers):
            server.stop()
        self._servers.clear()

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        port: int,
        ready_path: str,
        core: int | None,
        idle: bool = False,
        timeout: float = 60.0,
    ) -> Server:
        """Start `argv` (pinned to `core`) and wait until GET `ready_path` answers 200.

        `idle`: run it in the SCHED_IDLE class (`chrt --idle 0`, sched(7)), so it gets the
        core only when nothing else there wants it.
        """
        log = self._logs / f"{name}.log"
        command = ["taskset", "-c", str(core), *argv] if core is not None else argv
        if idle:
            command = ["chrt", "--idle", "0", *command]
        started = time.perf_counter()
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
            )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        self._servers.append(server)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            server.check_alive()
            if answer(server.url + ready_path, timeout=0.5) == 200:
                server.ready_seconds = time.perf_counter() - started
                return server
            time.sleep(READY_POLL_SECONDS)
        raise ProcessError(
            f"{name} did not answer {ready_path} within {timeout:.0f}s; its log ends with:\n"
            + server.log_tail()
        )

    def stop(self, server: Server) -> int:
        code = server.stop()
        if server in self._servers:
            self._servers.remove(server)
        return code


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without AWS, model or capture settings, plus `extra`.

    The repository goes first on PYTHONPATH so `bench.*` apps import from a checkout.
    """
    dropped = ("AWS_", "MODEL_", "PREDICTION_LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}
