"""An environment's AWS resources made directly in a moto server (what terraform would make)."""

from __future__ import annotations

import json

import boto3

from pipeline.environment import Environment

CLUSTER, SERVICE, FAMILY, CONTAINER = "onnx-ship-dev", "onnx-ship-dev", "onnx-ship-dev", "service"


def make_environment(endpoint: str, name: str = CLUSTER, environment: str = "dev") -> Environment:
    """A cluster, service, task definition, bucket and ECR repository all called `name`."""
    ecs = boto3.client("ecs")
    ecs.create_cluster(clusterName=name)
    first = ecs.register_task_definition(
        family=name,
        tags=[
            {"key": "Project", "value": "onnx-ship"},
            {"key": "Environment", "value": environment},
        ],
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="512",
        memory="1024",
        executionRoleArn=f"arn:aws:iam::123456789012:role/{name}-execution",
        taskRoleArn=f"arn:aws:iam::123456789012:role/{name}-task",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "public.ecr.aws/docker/library/python:3.11-slim",
                "command": ["python", "-c", "placeholder"],
                "essential": True,
                "portMappings": [{"containerPort": 8080}],
                "environment": [
                    {"name": "APP_ENV", "value": environment},
                    {"name": "PORT", "value": "8080"},
                    {"name": "PREDICTION_LOG_URL", "value": f"s3://{name}/capture"},
                ],
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=name,
        serviceName=name,
        taskDefinition=first,
        desiredCount=1,
        launchType="FARGATE",
    )
    boto3.client("s3").create_bucket(Bucket=name)
    boto3.client("ecr").create_repository(repositoryName=name)
    return Environment(
        environment=environment,
        aws_region="us-east-1",
        cluster_name=name,
        service_name=name,
        task_family=name,
        task_definition_arn=first,
        container_name=CONTAINER,
        ecr_repository_url=f"127.0.0.1:5000/{name}",
        capture_url=f"s3://{name}/capture",
        deployments_url=f"s3://{name}/deployments",
        models_url=f"s3://{name}/models",
        endpoint_url=endpoint,
    )


def stored(image: str) -> str:
    """`image` (`<registry>/<repository>@sha256:...`), put in moto's ECR repository of that
    name under its digest, as a push leaves it; returned as it is."""
    repository, _, digest = image.partition("@")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "digest": digest,
            "size": 1,
            "mediaType": "application/vnd.oci.image.config.v1+json",
        },
        "layers": [],
    }
    boto3.client("ecr").put_image(
        repositoryName=repository.partition("/")[2],
        imageManifest=json.dumps(manifest),
        imageTag=f"pushed-{digest[7:19]}",
        imageDigest=digest,
    )
    return image
