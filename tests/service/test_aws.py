"""Every AWS client the service and the pipeline make retries in botocore's standard mode.

boto3's default legacy mode does not retry `TooManyRequestsException` (Athena's answer when
a workgroup's concurrent queries are at their quota; Boto3 guide, "Retries"): a report
through Athena then failed at the first busy moment. The standard mode retries it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.environment import AWS_TOTAL_ATTEMPTS, regional_client
from pipeline.predictions import store as prediction_store
from service import aws
from service import store as service_store
from service.capture import sinks

ROOT = Path(__file__).resolve().parents[2]
MAKES_A_CLIENT = re.compile(r"boto3\s*\.\s*(client|resource|Session|session\.Session)\s*\(")


@pytest.fixture(autouse=True)
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)


def test_only_service_aws_makes_boto3_clients():
    """One way to make a client: any other module calling boto3 directly would get the
    legacy retry mode back."""
    makers = sorted(
        str(path.relative_to(ROOT))
        for package in ("service", "pipeline")
        for path in (ROOT / package).rglob("*.py")
        if MAKES_A_CLIENT.search(path.read_text())
    )
    assert makers == ["service/aws.py"]


def test_a_client_retries_in_standard_mode_and_keeps_its_settings():
    client = aws.client("s3", region="eu-west-1", total_attempts=4, read_timeout=7)
    config = client.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert (client.meta.region_name, config.read_timeout) == ("eu-west-1", 7)


def test_without_a_count_aws_max_attempts_still_applies(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert aws.client("s3").meta.config.retries == {"mode": "standard", "total_max_attempts": 1}


@pytest.mark.parametrize(
    "make",
    [
        lambda: regional_client("athena", "eu-central-1"),
        lambda: regional_client("ecr", "eu-central-1"),
        prediction_store._s3_client,
        service_store._default_client,
        sinks._s3_client,
        lambda: regional_client("ecs", "eu-central-1", by=0.0),
    ],
    ids=["athena report", "ecr push", "capture reader", "store", "capture sink", "put-back"],
)
def test_each_client_the_project_makes_is_in_standard_mode(make):
    assert make().meta.config.retries["mode"] == "standard"


def test_the_pipelines_clients_try_in_the_environments_region_with_its_bound():
    client = regional_client("athena", "eu-central-1")
    assert client.meta.region_name == "eu-central-1"
    assert client.meta.config.retries["total_max_attempts"] == AWS_TOTAL_ATTEMPTS


def test_an_s3_store_out_of_reach_says_what_to_check():
    """Records, models and capture all read S3 through service.store: the one mapping."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    from service.store import StoreUnreachable, store_error

    missing = store_error(NoCredentialsError())
    assert isinstance(missing, StoreUnreachable)
    assert str(missing) == (
        "Unable to locate credentials; check the AWS credentials the pipeline runs with "
        "(AWS_PROFILE, AWS_ACCESS_KEY_ID)"
    )
    for unanswered in (EndpointConnectionError, ReadTimeoutError):
        down = store_error(unanswered(endpoint_url="http://127.0.0.1:9"))
        assert str(down).endswith(
            "; AWS did not answer: check the network, the region, and AWS_ENDPOINT_URL if one "
            "is set"
        )


def test_access_denied_names_the_list_of_permissions():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
    assert aws.explain(denied).endswith(
        "; the role lacks a permission this call needs: pipeline/aws_calls.py lists what each "
        "role may do and terraform/modules grants it; apply the environment "
        "(nox -s apply -- <env>)"
    )
