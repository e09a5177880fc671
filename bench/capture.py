"""Throughput of POST /predict with prediction capture to S3 (moto) against capture off.

    python bench/capture.py [--rounds 2] [--seconds 10] [--connections 16]

Starts a moto S3 server on 127.0.0.1, then for each round serves the reference
model with `python -m service` (one uvicorn worker) twice, capture off and
capture on (`s3://bench/predictions`), alternating which goes first, and
drives each with `wrk` posting one 784-number image. With capture on it also
checks that S3 holds exactly one record per answered request.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.predictions import open_store, read_records  # noqa: E402
from pipeline.reference import fetch_artifact, load_reference  # noqa: E402

BUCKET = "bench"
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "1"},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/v2/health/ready", process)
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux): steadier than req/s on a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[float, int, str]:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))
    total = int(re.search(r"(\d+) requests in", result.stdout).group(1))
    p99 = re.search(r"99%\s+(\S+)", result.stdout).group(1)
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        print(result.stdout, file=sys.stderr)
    return rate, total, p99


def _children_cpu() -> float:
    """CPU time of the last reaped child (the service), via RUSAGE_CHILDREN deltas."""
    import resource

    global _REAPED
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    spent, _REAPED = total - _REAPED, total
    return spent


_REAPED = 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    reference = load_reference()
    model = fetch_artifact(reference.model)
    work = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    moto_port = free_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(aws)
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{moto_port}/moto-api/", moto)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        images = json.dumps({"data": [(i * 7) % 256 for i in range(784)]})
        script = work / "post.lua"
        script.write_text(LUA.format(body=images))
        base = {
            "MODEL_URL": str(model),
            "MODEL_SHA256": reference.model.sha256 or "",
            "MODEL_CACHE_DIR": str(work / "cache"),
            "APP_ENV": "dev",
        }
        modes = {"off": "off", "on": f"s3://{BUCKET}/predictions"}
        rates: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        captured = 0
        answered = 0
        for round_ in range(args.rounds):
            order = ["off", "on"] if round_ % 2 == 0 else ["on", "off"]
            for mode in order:
                process, url = serve({**base, "PREDICTION_LOG_URL": modes[mode]})
                before = cpu_seconds(process.pid)
                rate, total, p99 = run_wrk(url + "/predict", script, args.seconds, args.connections)
                _children_cpu()  # leave wrk's own CPU out
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)  # capture on: includes the final flush
                per_request = (_children_cpu() - before) / total * 1e6
                rates[mode].append(rate)
                cpu[mode].append(per_request)
                if mode == "on":
                    answered += total
                print(
                    f"round {round_ + 1} capture {mode:>3}: {rate:8.0f} req/s  p99 {p99:>8}  "
                    f"service CPU {per_request:6.1f} us/request"
                )
        captured = sum(1 for _ in read_records(open_store(modes["on"]), "dev"))
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"\nmedian: capture off {off:.0f} req/s, capture on {on:.0f} req/s: {on / off:.1%}")
        cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
        print(
            f"median service CPU per request: off {cpu_off:.1f} us, on {cpu_on:.1f} us: "
            f"capture-on throughput at CPU saturation: {cpu_off / cpu_on:.1%} of capture-off"
        )
        print(f"records in S3: {captured}; requests answered with capture on: {answered}")
        # wrk counts requests whose response it read; a request answered as wrk stopped may
        # be recorded without being counted, so records may exceed wrk's count by a few.
        return 0 if captured >= answered else 1
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
