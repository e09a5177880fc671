"""boto3 clients, made one way: botocore's standard retry mode.

boto3's default is the legacy mode, which retries only some throttling errors: not
`TooManyRequestsException` (Athena's answer when a workgroup's concurrent queries are at
their quota), nor `LimitExceededException` or `PriorRequestNotComplete`. The standard mode
retries every throttling and transient error (HTTP 5xx, connection errors) with exponential
backoff and jitter (Boto3 guide, "Retries"; AWS SDKs and Tools reference guide, "Retry
behavior"). Every AWS client of the service and the pipeline is made here.
"""

from __future__ import annotations

from typing import Any


def client(
    service: str,
    *,
    region: str | None = None,
    total_attempts: int | None = None,
    **config: Any,
) -> Any:
    """A boto3 client for `service` (e.g. "s3", "ecs") in standard retry mode.

    `region`: the client's region; None leaves it to boto3 (AWS_REGION, the profile).
    `total_attempts`: tries in all, the first included; None leaves it to
    AWS_MAX_ATTEMPTS, else the standard mode's 3. `config`: other botocore `Config`
    settings (timeouts in seconds, `max_pool_connections`). boto3 reads
    AWS_ENDPOINT_URL and the credentials from the environment.
    """
    import boto3
    from botocore.config import Config

    retries: dict[str, Any] = {"mode": "standard"}
    if total_attempts is not None:
        retries["total_max_attempts"] = total_attempts
    return boto3.client(service, region_name=region, config=Config(retries=retries, **config))
