"""The stop timeout, shared between uvicorn's drain and the prediction capture's flush.

ECS stops a task behind a load balancer in this order (ECS developer guide, "Task
lifecycle" and the container definition's `stopTimeout`; Elastic Load Balancing,
"Deregistration delay"): the target is deregistered and the load balancer drains it
for the deregistration delay, then the container gets SIGTERM, then SIGKILL once
`stopTimeout` seconds have passed (30 s by default, at most 120 s on Fargate).

Everything the service does after SIGTERM must fit in that one number:

    SIGTERM -> drain (in-flight requests) -> capture flush (to the sink) -> exit
            |<------------------- stop_timeout - margin ------------------>|
"""

from __future__ import annotations

from dataclasses import dataclass

# Left unclaimed for what follows the flush: parts it could not upload are written to
# the spool, the model is released and the interpreter exits.
MARGIN_SECONDS = 5
# The load balancer has drained the task before SIGTERM, so few requests are still in
# flight then (inference takes milliseconds): a quarter for them, the rest for the flush.
DRAIN_SHARE = 0.25
# A margin, one second of drain and the rest of the flush need at least this much.
MIN_STOP_TIMEOUT_SECONDS = 10


@dataclass(frozen=True)
class StopBudget:
    """Seconds after SIGTERM: `drain` for in-flight requests, then `flush` for capture."""

    drain_seconds: int
    flush_seconds: int


def stop_budget(stop_timeout_seconds: int) -> StopBudget:
    """Split a container's stop timeout (seconds, at least MIN_STOP_TIMEOUT_SECONDS).

    drain + flush + MARGIN_SECONDS == stop_timeout_seconds, so the service is done
    before the SIGKILL that ends `stopTimeout` (ECS container definition parameters,
    "stopTimeout"). Raises ValueError for a timeout too short to split.
    """
    if stop_timeout_seconds < MIN_STOP_TIMEOUT_SECONDS:
        raise ValueError(
            f"a stop timeout of {stop_timeout_seconds} s is shorter than "
            f"{MIN_STOP_TIMEOUT_SECONDS} s"
        )
    usable = stop_timeout_seconds - MARGIN_SECONDS
    drain = max(1, int(usable * DRAIN_SHARE))
    return StopBudget(drain_seconds=drain, flush_seconds=usable - drain)
