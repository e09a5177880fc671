"""The dependency floors in pyproject.toml admit only versions that have what the code calls."""

from __future__ import annotations

import tomllib

import boto3
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO

# Measured on the botocore wheels: 1.35.1's S3 model has no IfNoneMatch on PutObject,
# 1.35.2's has (S3 conditional writes, August 2024); boto3 1.35.2 requires botocore 1.35.2.
FIRST_BOTO3_WITH_CONDITIONAL_WRITES = Version("1.35.2")


def floor(name: str) -> Version:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == name]
    (lower,) = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return lower


def test_boto3_floor_has_the_conditional_write_capture_uses() -> None:
    assert floor("boto3") >= FIRST_BOTO3_WITH_CONDITIONAL_WRITES
    put_object = boto3.client("s3", region_name="us-east-1").meta.service_model.operation_model(
        "PutObject"
    )
    assert "IfNoneMatch" in put_object.input_shape.members
