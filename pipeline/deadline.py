"""AWS calls that must end by a given time: the last calls of an interrupted command.

A GitHub runner kills a cancelled step 10 s after its SIGINT (`pipeline.interrupts`).
What a release still does then (point the service back, write its record) must fit in
that time, and botocore's defaults do not: 60 s to connect and 60 s to read, and, in the
standard retry mode the pipeline uses, backoffs of up to 20 s between tries ("Retries",
Boto3 guide; botocore.retries.standard). A client bound to a deadline (`bound`) gives each
try 1 s to connect and 2 s to answer (TRY_TIMEOUTS, which the client must be made with),
starts a try only when it can end by the deadline, and retries only when the longest
backoff botocore may pick and the next try both fit. So every call on it ends by then:
with its answer, with the last try's error, or with OutOfTime when no try fits.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError

TRY_TIMEOUTS = {"connect_timeout": 1.0, "read_timeout": 2.0}
TRY_SECONDS = sum(TRY_TIMEOUTS.values())  # the most one try takes, in seconds

# botocore's standard mode: a throttled try waits rand(0, 1) * min(2 ** (n - 1), 20) s
# before try n + 1, or up to 5 s more when the answer carries x-amz-retry-after (ms).
_BACKOFF_CAP = 20.0
_RETRY_AFTER_MORE = 5.0
# Kept beside a retry's backoff and try, for the time between the check and the try.
_SLACK = 0.25


class OutOfTime(BotoCoreError):
    """A call on a client bound to a deadline was not sent: no try could end by then."""

    fmt = "{operation} not sent: {left:.1f} s left before its deadline, a try takes {need:.0f} s"


def bound(client: Any, deadline: float, *, clock=time.monotonic) -> Any:
    """`client` (made with TRY_TIMEOUTS), its calls ending by `deadline` (a
    time.monotonic() value); returns it."""
    events = client.meta.events

    def before_send(request: Any = None, event_name: str = "", **_: Any) -> None:
        left = deadline - clock()
        if left < TRY_SECONDS:
            operation = event_name.rsplit(".", 1)[-1]
            raise OutOfTime(operation=operation, left=max(left, 0.0), need=TRY_SECONDS)

    def needs_retry(attempts: int = 1, response: Any = None, **_: Any) -> bool | None:
        if clock() + _longest_backoff(attempts, response) + TRY_SECONDS + _SLACK > deadline:
            return False  # no retry: a later handler's delay would not be slept
        return None  # botocore's retry handler decides

    # botocore calls the handlers of the most specific event name first; its retry
    # handler is registered as `needs-retry.<service id>`, so this one is too, ahead of it.
    service = client.meta.service_model.service_id.hyphenize()
    events.register(f"before-send.{service}", before_send)
    events.register_first(f"needs-retry.{service}", needs_retry)
    return client


def _longest_backoff(attempts: int, response: Any) -> float:
    """The longest wait botocore's standard mode may choose before try `attempts` + 1."""
    cap = min(2.0 ** (attempts - 1), _BACKOFF_CAP)
    headers = getattr(response[0], "headers", {}) if response else {}
    retry_after = headers.get("x-amz-retry-after")
    try:
        asked = int(retry_after) / 1000 if retry_after is not None else None
    except ValueError:
        asked = None
    if asked is None:
        return cap
    return max(cap, min(asked, cap + _RETRY_AFTER_MORE))
