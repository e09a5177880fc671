"""boto3 clients, made one way: botocore's standard retry mode.

boto3's default is the legacy mode, which retries only some throttling errors: not
`TooManyRequestsException` (Athena's answer when a workgroup's concurrent queries are at
their quota), nor `LimitExceededException` or `PriorRequestNotComplete`. The standard mode
retries every throttling and transient error (HTTP 5xx, connection errors) with exponential
backoff and jitter (Boto3 guide, "Retries"; AWS SDKs and Tools reference guide, "Retry
behavior"). Every AWS client of the service and the pipeline is made here, and every AWS
error that no retry changed is worded here with what to do about it (`explain`): codes are
AWS's ("Common Errors" of each API reference; ECS API reference, DescribeServices: Errors)
or, for botocore's own errors, the class name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # botocore is imported with the first client or error, not with the service
    from botocore.exceptions import BotoCoreError, ClientError


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


GRANT = (
    "the role lacks a permission this call needs: pipeline/aws_calls.py lists what each role "
    "may do and terraform/modules grants it; apply the environment (nox -s apply -- <env>)"
)
SESSION = (
    "the AWS session ended before the command did: run it again; in GitHub Actions the "
    "deploy job's role-duration-seconds (.github/workflows/pipeline.yml) must cover its "
    "timeout-minutes"
)
CREDENTIALS = "check the AWS credentials the pipeline runs with (AWS_PROFILE, AWS_ACCESS_KEY_ID)"
NAMES = (
    "check the environment's cluster_name, service_name and aws_region outputs, or run its "
    "terraform apply (nox -s apply -- <env>)"
)
UNREACHABLE = (
    "AWS did not answer: check the network, the region, and AWS_ENDPOINT_URL if one is set"
)
DENIED = frozenset({"AccessDeniedException", "AccessDenied"})
FIXES = {
    "ExpiredTokenException": SESSION,
    "ExpiredToken": SESSION,
    "RequestExpired": SESSION,
    "UnrecognizedClientException": CREDENTIALS,
    "InvalidClientTokenId": CREDENTIALS,
    "InvalidSignatureException": CREDENTIALS,
    "IncompleteSignature": CREDENTIALS,
    "NoCredentialsError": CREDENTIALS,
    "PartialCredentialsError": CREDENTIALS,
    "NoRegionError": "set AWS_REGION, or apply the environment for its aws_region output",
    "EndpointConnectionError": UNREACHABLE,
    "ConnectTimeoutError": UNREACHABLE,
    "ReadTimeoutError": UNREACHABLE,
    # pipeline.deadline: an interrupted command's last calls, none sent past its deadline.
    "OutOfTime": "the command was interrupted, and no time was left for this call",
    "ClusterNotFoundException": NAMES,
    "ServiceNotFoundException": NAMES,
}


def error_code(error: BotoCoreError | ClientError) -> str:
    """AWS's error code of `error` (a ClientError), else botocore's class name."""
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__


def fix(error: BotoCoreError | ClientError, *, grant: str = GRANT) -> str:
    """What to do about `error`: `grant` when access was denied, FIXES' entry for its code,
    else that asking again would get the same answer."""
    code = error_code(error)
    if code in DENIED:
        return grant
    return FIXES.get(code, "asking again would get the same answer")


def explain(error: BotoCoreError | ClientError) -> str:
    """One line for a command that ends on `error`: the error and what to do about it."""
    return f"{error}; {fix(error)}"
