"""Clients bound to a deadline (pipeline.deadline), against an ECS that throttles every
call or never answers (tests.pipeline.awsfront): each call ends by the deadline, having
retried while a retry fitted."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from pipeline import deadline
from pipeline.deadline import TRY_SECONDS, OutOfTime
from pipeline.environment import regional_client
from service import aws
from tests.pipeline.awsfront import SILENT, THROTTLE, AwsFront

CLUSTER, SERVICE = "onnx-ship-dev", "onnx-ship-dev"


@pytest.fixture
def front(aws, monkeypatch):
    with AwsFront(aws.endpoint) as front:
        monkeypatch.setenv("AWS_ENDPOINT_URL_ECS", front.url)
        yield front


def describe_within(seconds: float) -> None:
    """Call DescribeServices on a client bound to `seconds` from now."""
    client = regional_client("ecs", "us-east-1", by=time.monotonic() + seconds)
    client.describe_services(cluster=CLUSTER, services=[SERVICE])


def test_a_throttled_call_is_retried_while_a_retry_fits_and_ends_by_the_deadline(front):
    front.mode = THROTTLE
    started = time.monotonic()
    with pytest.raises(ClientError) as raised:
        describe_within(6.0)
    assert time.monotonic() - started <= 6.0
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert front.requests[THROTTLE] >= 2  # retried: the first backoff (at most 1 s) fitted


def test_a_call_that_gets_no_answer_ends_by_the_deadline_with_the_timeout(front):
    front.mode = SILENT
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        describe_within(5.0)
    assert time.monotonic() - started <= 5.0
    assert front.requests[SILENT] == 1  # a second try of up to 3 s would not have ended by then


def test_a_call_with_no_time_for_a_try_is_not_sent_and_says_why(front):
    front.mode = THROTTLE
    with pytest.raises(OutOfTime, match=r"DescribeServices not sent: \d\.\d s left") as raised:
        describe_within(TRY_SECONDS - 0.5)
    assert sum(front.requests.values()) == 0
    assert aws.fix(raised.value) == (
        "the command was interrupted, and no time was left for this call"
    )


def test_a_client_bound_to_a_deadline_serves_as_any_other_while_aws_answers(front):
    regional_client("ecs", "us-east-1").create_cluster(clusterName=CLUSTER)
    client = regional_client("ecs", "us-east-1", by=time.monotonic() + 30)
    (cluster,) = client.describe_clusters(clusters=[CLUSTER])["clusters"]
    assert cluster["clusterName"] == CLUSTER and front.requests["pass"] >= 2


def test_only_a_client_with_short_tries_is_bound():
    with pytest.raises(ValueError, match="made with"):
        deadline.bound(regional_client("ecs", "us-east-1"), time.monotonic() + 30)


class Answer:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@pytest.mark.parametrize(
    ("attempts", "retry_after", "longest"),
    [
        (1, None, 1.0),
        (3, None, 4.0),
        (9, None, 20.0),  # the cap
        (1, "4000", 4.0),  # the answer asks for 4 s: up to 1 + 5 s is allowed
        (1, "60000", 6.0),
        (1, "9" * 400, 1.0),  # not a number of milliseconds botocore takes
        (1, "soon", 1.0),
    ],
)
def test_the_longest_backoff_is_the_most_botocore_may_wait(attempts, retry_after, longest):
    headers = {} if retry_after is None else {"x-amz-retry-after": retry_after}
    assert deadline._longest_backoff(attempts, (Answer(headers), {})) == longest


def test_the_backoff_bounds_are_botocores():
    """botocore.retries.standard's own constants: a newer botocore that changes them
    would make the deadline's arithmetic wrong."""
    from botocore.retries.standard import ExponentialBackoff

    assert ExponentialBackoff._MAX_BACKOFF == deadline.BACKOFF_CAP_SECONDS
    assert ExponentialBackoff._RETRY_AFTER_MAX_ADDITIONAL == deadline.RETRY_AFTER_MORE_SECONDS
