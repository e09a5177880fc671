"""`python -m bench [--quick]`: run the benchmark, print the table and ratios, write JSON."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench import report
from bench.capture_read import CaptureReadError
from bench.count import CountError
from bench.processes import ProcessError
from bench.run import CONTENDERS, BenchError, Options, run
from bench.wrk import WrkError
from pipeline.datasets import DatasetError
from pipeline.reference import InvalidReference
from service.artifacts import ArtifactError

# The model reference or its files cannot be used (a download that fails offline, a
# FIXTURES_DIR that lacks a file): the message names the fix; exit status 2, as the
# pipeline's commands give for the same faults.
REFERENCE_FAULTS = (ArtifactError, DatasetError, InvalidReference)

DEFAULT_OUTPUT = Path("build/bench/results.json")


def concurrency_levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        message = f"{text!r} is not a comma-separated list of integers"
        raise argparse.ArgumentTypeError(message) from None
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be integers of at least 1")
    return levels


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 s per level and 256 counted requests (about 7 minutes in all: the "
        "capture-read rows keep their size)",
    )
    p.add_argument("--seconds", type=int, help="seconds per concurrency level (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds per row (default 1)")
    p.add_argument(
        "--rounds",
        type=int,
        help="alternated rounds a level's seconds are split into, for a row on several "
        "servers (the single-image row on every contender, capture off and on) "
        "(default 3; 1 with --quick)",
    )
    p.add_argument(
        "--concurrency", type=concurrency_levels, default=(1, 16, 64), help="default 1,16,64"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=CONTENDERS,
        default=(),
        help="measure only these (default: all)",
    )
    p.add_argument(
        "--steal-limit",
        type=float,
        default=1.0,
        help="percent of a core's time the hypervisor may take: each run waits for a "
        "second of cores below it and is measured again above it (default 1; bench/steal.py)",
    )
    p.add_argument(
        "--steal-budget",
        type=int,
        default=600,
        help="whole seconds the bench may spend waiting for quiet cores and measuring "
        "disturbed runs again (default 600; 0: every run once, its steal only shown)",
    )
    p.add_argument(
        "--workdir", type=Path, help="keep bodies, Lua scripts and server logs here (default: temp)"
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default {DEFAULT_OUTPUT}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (1 if args.quick else 5)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    for flag, value, least in (
        ("--seconds", seconds, 1),
        ("--rounds", rounds, 1),
        ("--warmup", args.warmup, 0),
        ("--steal-budget", args.steal_budget, 0),
    ):
        if value < least:
            print(f"error: {flag} is {value}; it must be at least {least}", file=sys.stderr)
            return 2
    if not 0 < args.steal_limit <= 100:
        print(
            f"error: --steal-limit is {args.steal_limit}; it is a percent, more than 0 "
            "and at most 100",
            file=sys.stderr,
        )
        return 2
    options = Options(
        seconds=seconds,
        rounds=rounds,
        warmup_seconds=args.warmup,
        concurrency=args.concurrency,
        compute_seconds=1.0 if args.quick else 3.0,
        count_requests=256 if args.quick else 512,
        only=tuple(args.only),
        steal_limit=args.steal_limit / 100,
        steal_budget_seconds=args.steal_budget,
    )
    # A SIGTERM (nox or CI stopping us) unwinds like Ctrl-C, so every started server is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        results = run(options, args.workdir)
    except REFERENCE_FAULTS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BenchError, CaptureReadError, CountError, ProcessError, WrkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(results))
    path = report.write_json(results, args.output)
    print(f"\nresults written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
