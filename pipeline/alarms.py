"""The CloudWatch alarms that judge a service's deployments, read as a release needs them.

ECS watches a service's deployment alarms (`deploymentConfiguration.alarms`) and fails a
deployment when one of them moves to ALARM, but it ignores them for the whole deployment
when any of them is already in ALARM as the deployment starts, so that a new deployment
can fix a failing one (ECS developer guide, "How CloudWatch alarms detect Amazon ECS
deployment failures"). A release started then watches the alarms itself after the rollout
(`DeploymentAlarms.bake`): the ones that were quiet must stay out of ALARM, as ECS would
have required of them. The ones already in ALARM cannot tell the new release from the old
one (a p95 latency alarm that ignores low sample counts keeps its state at low traffic),
so they are named, not judged, as ECS does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

IN_ALARM = "ALARM"
POLL_SECONDS = 10.0
METRICS_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class AlarmState:
    """One metric alarm as DescribeAlarms answers it (CloudWatch API reference, MetricAlarm)."""

    state: str  # StateValue: OK, ALARM or INSUFFICIENT_DATA
    since: datetime | None  # when StateValue last changed (StateTransitionedTimestamp)
    # Period x EvaluationPeriods: the data one evaluation reads (0 for an alarm on a metric
    # math expression, whose period is its metrics')
    window_seconds: float

    @property
    def in_alarm(self) -> bool:
        return self.state == IN_ALARM


def watched_alarms(service: Mapping[str, Any]) -> tuple[str, ...]:
    """The alarm names ECS watches during the deployments of `service` (a DescribeServices
    `Service`): `deploymentConfiguration.alarms.alarmNames` when `enable` is true, else ()."""
    alarms = (service.get("deploymentConfiguration") or {}).get("alarms") or {}
    return tuple(alarms.get("alarmNames") or ()) if alarms.get("enable") else ()


def bake_seconds(states: Iterable[AlarmState]) -> float:
    """How long a release watches the alarms after its rollout: the longest evaluation
    window of `states` and a minute more, the interval at which the load balancer sends
    its metrics to CloudWatch (ELB guide, "CloudWatch metrics for your Application Load
    Balancer"); 0 for no alarms."""
    windows = [state.window_seconds for state in states]
    return max(windows) + METRICS_INTERVAL_SECONDS if windows else 0.0


class DeploymentAlarms:
    """DescribeAlarms of a service's deployment alarms (`client`: a boto3 CloudWatch
    client, as `Environment.client("cloudwatch")` gives one)."""

    def __init__(
        self,
        client: Any,
        *,
        poll_seconds: float = POLL_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._poll = poll_seconds
        self._sleep = sleep

    def states(self, names: Sequence[str]) -> dict[str, AlarmState]:
        """Each named metric alarm's state, by name; alarms that do not exist are left out.
        Raises botocore's ClientError (AccessDenied names the missing grant)."""
        found: dict[str, AlarmState] = {}
        if not names:
            return found
        pages = self._client.get_paginator("describe_alarms").paginate(
            AlarmNames=list(names), AlarmTypes=["MetricAlarm"]
        )
        for page in pages:
            for alarm in page.get("MetricAlarms", []):
                found[alarm["AlarmName"]] = AlarmState(
                    state=alarm["StateValue"],
                    since=alarm.get("StateTransitionedTimestamp"),
                    window_seconds=float(alarm.get("Period", 0) * alarm["EvaluationPeriods"]),
                )
        return found

    def bake(self, before: Mapping[str, AlarmState], seconds: float) -> dict[str, AlarmState]:
        """Watch the alarms of `before` (their states as the deployment started) for
        `seconds`, reading them now and after every `poll_seconds` of sleep: the states
        last read, as soon as one of them moved to ALARM (`moved_to_alarm`), else at the
        end."""
        now = self.states(list(before))
        waited = 0.0
        while waited < seconds and not moved_to_alarm(before, now):
            self._sleep(self._poll)
            waited += self._poll
            now = self.states(list(before))
        return now


def moved_to_alarm(before: Mapping[str, AlarmState], now: Mapping[str, AlarmState]) -> list[str]:
    """The alarms in ALARM `now` that were not in it `before`, or that left it and came
    back since (another state change); one in ALARM all along is not counted."""
    return sorted(
        name
        for name, state in now.items()
        if state.in_alarm
        and not (name in before and before[name].in_alarm and before[name].since == state.since)
    )
