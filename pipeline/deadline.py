"""AWS calls that must end by a given time: the last calls of an interrupted command.

What a release still does once interrupted (point the service back, write its record)
must be done before the runner's kill (`pipeline.interrupts.GRACE_SECONDS`), and
botocore's defaults do not see to that: 60 s to connect and 60 s to read, and, in the
standard retry mode the pipeline uses, backoffs of up to 20 s between tries ("Retries",
Boto3 guide; botocore.retries.standard). A client bound to a deadline (`bound`) waits at
most 1 s for a connection and 2 s for each read of the answer (TRY_TIMEOUTS), starts a
try only while TRY_SECONDS are left, and retries only when the longest backoff botocore
may pick and another try both fit. Throttling, an address that takes no connection and
a connection that goes silent thus end the call by the deadline, with the last try's
error or OutOfTime. What the timeouts cannot bound is not: a name that takes long to
resolve, each further address of a name that resolves to several (urllib3 tries them in
turn), an answer that trickles in a byte at a time. The runner's kill is then the bound.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError

TRY_TIMEOUTS = {"connect_timeout": 1.0, "read_timeout": 2.0}
TRY_SECONDS = sum(TRY_TIMEOUTS.values())  # a try to one address whose answer does not trickle

# botocore's standard mode (botocore.retries.standard.ExponentialBackoff): a throttled try
# waits rand(0, 1) * min(2 ** (n - 1), 20) s before try n + 1, raised towards the answer's
# x-amz-retry-after (ms) by at most 5 s more.
BACKOFF_CAP_SECONDS = 20.0
RETRY_AFTER_MORE_SECONDS = 5.0
# Kept beside a retry's backoff and try, for the time between the check and the try.
_SLACK = 0.25


class OutOfTime(BotoCoreError):
    """A call on a client bound to a deadline was not sent: no try could end by then."""

    fmt = "{operation} not sent: {left:.1f} s left before its deadline, a try takes {need:.0f} s"


def bound(client: Any, by: float) -> Any:
    """`client`, its calls ending by `by` (a time.monotonic() value) as this module says;
    returns it. Calls on it raise OutOfTime when no try can end by then. Raises
    ValueError for a client not made with TRY_TIMEOUTS (`service.aws.client(...,
    **TRY_TIMEOUTS)`), whose tries could outlast the deadline."""
    config = client.meta.config
    if (config.connect_timeout, config.read_timeout) != tuple(TRY_TIMEOUTS.values()):
        raise ValueError(f"a client bound to a deadline is made with {TRY_TIMEOUTS}")

    def before_send(event_name: str = "", **_: Any) -> None:
        left = by - time.monotonic()
        if left < TRY_SECONDS:
            operation = event_name.rsplit(".", 1)[-1]
            raise OutOfTime(operation=operation, left=max(left, 0.0), need=TRY_SECONDS)

    def needs_retry(attempts: int = 1, response: Any = None, **_: Any) -> bool | None:
        if time.monotonic() + _longest_backoff(attempts, response) + TRY_SECONDS + _SLACK > by:
            return False  # no retry: a later handler's delay would not be slept
        return None  # botocore's retry handler decides

    # botocore calls the handlers of the most specific event name first; its retry
    # handler is registered as `needs-retry.<service id>`, so this one is too, ahead of it.
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-send.{service}", before_send)
    client.meta.events.register_first(f"needs-retry.{service}", needs_retry)
    return client


def _longest_backoff(attempts: int, response: Any) -> float:
    """The longest wait botocore's standard mode may choose before try `attempts` + 1, in
    seconds (`response`: the (http response, parsed) pair of try `attempts`, if any)."""
    cap = min(2.0 ** (attempts - 1), BACKOFF_CAP_SECONDS)
    headers = getattr(response[0], "headers", {}) if response else {}
    try:
        asked = int(headers["x-amz-retry-after"]) / 1000
    except (KeyError, ValueError, OverflowError):  # none, or not a number of ms
        return cap
    return max(cap, min(asked, cap + RETRY_AFTER_MORE_SECONDS))
