"""The CloudWatch alarms that judge a service's deployments, read as a release needs them.

ECS watches a service's deployment alarms (`deploymentConfiguration.alarms`) and fails a
deployment when one of them moves to ALARM, but it ignores them for the whole deployment
when any of them is already in ALARM as the deployment starts, so that a new deployment
can fix a failing one (ECS developer guide, "How CloudWatch alarms detect Amazon ECS
deployment failures"). A release that starts so watches the alarms itself (`AlarmWatch`):
from its smoke test on, for their bake time, none may move to ALARM. The ones already in
ALARM cannot tell the new release from the old one (a p95 latency alarm that ignores low
sample counts keeps its state at low traffic), so they are named, not judged, as ECS
does. What moved to ALARM and back between the update and the bake is not seen: the watch
reads the alarms' current states, not their history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

IN_ALARM = "ALARM"
POLL_SECONDS = 10.0
# The load balancer sends its metrics to CloudWatch every 60 s (ELB guide, "CloudWatch
# metrics for your Application Load Balancer").
METRICS_INTERVAL_SECONDS = 60.0
# A bake never holds a release longer than ECS's own rollout bound (release.py).
MAX_BAKE_SECONDS = 15 * 60.0


class AlarmsMoved(Exception):
    """A deployment alarm moved to ALARM while the release watched them; names them."""


@dataclass(frozen=True)
class AlarmState:
    """One metric alarm as DescribeAlarms answers it (CloudWatch API reference, MetricAlarm)."""

    state: str  # StateValue: OK, ALARM or INSUFFICIENT_DATA
    since: datetime | None  # when StateValue last changed (StateTransitionedTimestamp)
    window_seconds: float  # period x EvaluationPeriods: the data one evaluation reads

    @property
    def in_alarm(self) -> bool:
        return self.state == IN_ALARM


def watched_alarms(service: Mapping[str, Any]) -> tuple[str, ...]:
    """The alarm names ECS watches during the deployments of `service` (a DescribeServices
    `Service`): `deploymentConfiguration.alarms.alarmNames` when `enable` is true, else ()."""
    alarms = (service.get("deploymentConfiguration") or {}).get("alarms") or {}
    return tuple(alarms.get("alarmNames") or ()) if alarms.get("enable") else ()


def firing(states: Mapping[str, AlarmState]) -> list[str]:
    """The names of the alarms in ALARM, sorted."""
    return sorted(name for name, state in states.items() if state.in_alarm)


def bake_seconds(states: Iterable[AlarmState]) -> float:
    """How long a release watches the alarms: the longest evaluation window of `states`
    and one metrics interval more, at most MAX_BAKE_SECONDS; 0 for no alarms."""
    windows = [state.window_seconds for state in states]
    return min(max(windows) + METRICS_INTERVAL_SECONDS, MAX_BAKE_SECONDS) if windows else 0.0


def moved_to_alarm(before: Mapping[str, AlarmState], now: Mapping[str, AlarmState]) -> list[str]:
    """The alarms in ALARM `now` that were not in it `before`, or that left it and came
    back since (another state change); one in ALARM all along is not counted."""
    return sorted(
        name
        for name, state in now.items()
        if state.in_alarm
        and not (name in before and before[name].in_alarm and before[name].since == state.since)
    )


def _period(alarm: Mapping[str, Any]) -> float:
    """An alarm's period in seconds: its own, or for an alarm on a metric math expression
    the longest of its metrics' (`Metrics[].MetricStat.Period`, `Metrics[].Period`)."""
    if alarm.get("Period"):
        return float(alarm["Period"])
    periods = [
        metric.get("MetricStat", {}).get("Period") or metric.get("Period") or 0
        for metric in alarm.get("Metrics", [])
    ]
    return float(max(periods, default=0))


@dataclass
class DeploymentAlarms:
    """DescribeAlarms of a service's deployment alarms (`client`: a boto3 CloudWatch
    client, as `Environment.client("cloudwatch")` gives one); `bake` reads them every
    `poll_seconds`, sleeping with `sleep`."""

    client: Any
    poll_seconds: float = POLL_SECONDS
    sleep: Callable[[float], None] = time.sleep

    def states(self, names: Sequence[str]) -> dict[str, AlarmState]:
        """Each named metric alarm's state, by name; alarms that do not exist (and
        composite alarms) are left out. Raises botocore's ClientError (AccessDenied when
        the role may not read them)."""
        found: dict[str, AlarmState] = {}
        if not names:
            return found
        pages = self.client.get_paginator("describe_alarms").paginate(
            AlarmNames=list(names), AlarmTypes=["MetricAlarm"]
        )
        for page in pages:
            for alarm in page.get("MetricAlarms", []):
                found[alarm["AlarmName"]] = AlarmState(
                    state=alarm["StateValue"],
                    since=alarm.get("StateTransitionedTimestamp"),
                    window_seconds=_period(alarm) * alarm["EvaluationPeriods"],
                )
        return found

    def bake(self, before: Mapping[str, AlarmState], seconds: float) -> dict[str, AlarmState]:
        """Watch the alarms of `before` (their states as the deployment started) for
        `seconds`, reading them now and after every `poll_seconds` of sleep: the states
        last read, as soon as one of them moved to ALARM (`moved_to_alarm`), else at the
        end. Raises ClientError as `states` does."""
        now = self.states(list(before))
        waited = 0.0
        while waited < seconds and not moved_to_alarm(before, now):
            self.sleep(self.poll_seconds)
            waited += self.poll_seconds
            now = self.states(list(before))
        return now


@dataclass
class AlarmWatch:
    """A release's view of its service's deployment alarms: read before the update (so a
    role that may not read them stops the release before anything changes) and again
    right after it, when ECS decides whether it watches them; active (`before` set) when
    one was in ALARM then, so ECS ignores them all and `bake` watches them instead."""

    alarms: DeploymentAlarms | None = None  # None: no alarms to read (nor a client for them)
    names: tuple[str, ...] = ()
    say: Callable[[str], None] = print
    before: dict[str, AlarmState] = field(default_factory=dict)
    firing_at_start: list[str] = field(default_factory=list)

    def read_before_update(self) -> None:
        """Read the alarms once (ClientError when the role may not); name the ones ECS
        names but CloudWatch does not have, which no one watches."""
        if self.alarms is None:
            return
        missing = sorted(set(self.names) - set(self.alarms.states(self.names)))
        if missing:
            self.say(
                "deployment alarms the service names that are not metric alarms in "
                f"CloudWatch (deleted, or composite), which this release cannot read: "
                f"{', '.join(missing)}"
            )

    def deployment_started(self) -> dict[str, list[str]]:
        """Read the alarms as the deployment has just started; when one is in ALARM, say
        that ECS ignores them and become active. The deployment record's entries:
        `alarms_in_alarm_at_start` when there were any, else {}."""
        if self.alarms is None:
            return {}
        states = self.alarms.states(self.names)
        self.firing_at_start = firing(states)
        if not self.firing_at_start:
            return {}
        self.before = states
        self.say(
            f"deployment alarms in ALARM as the deployment starts: "
            f"{', '.join(self.firing_at_start)}. ECS ignores the service's deployment alarms "
            'for a deployment that starts so (ECS developer guide, "How CloudWatch alarms '
            'detect Amazon ECS deployment failures"), so this release watches them for '
            f"{bake_seconds(states.values()):.0f} s after the smoke test, and fails if one "
            "moves to ALARM meanwhile"
        )
        return {"alarms_in_alarm_at_start": self.firing_at_start}

    def bake(self) -> None:
        """When active, watch the alarms for their bake time (`bake_seconds`); AlarmsMoved
        when one moved to ALARM meanwhile (`moved_to_alarm`); ClientError as `states`."""
        if self.alarms is None or not self.before:
            return
        seconds = bake_seconds(self.before.values())
        now = self.alarms.bake(self.before, seconds)
        if fired := moved_to_alarm(self.before, now):
            raise AlarmsMoved(
                f"deployment alarms moved to ALARM after the rollout: {', '.join(fired)} (ECS "
                "was not watching the alarms: one was in ALARM as the deployment started)"
            )
        still = firing(now)
        self.say(
            f"no deployment alarm went into ALARM in {seconds:.0f} s"
            + (f"; still in ALARM since before this release: {', '.join(still)}" if still else "")
        )
