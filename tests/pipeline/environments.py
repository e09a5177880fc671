"""An environment's AWS resources made directly in a moto server (what terraform would make)."""

from __future__ import annotations

import boto3

from pipeline.environment import Environment

CLUSTER, SERVICE, FAMILY, CONTAINER = "onnx-ship-dev", "onnx-ship-dev", "onnx-ship-dev", "service"


def make_environment(endpoint: str) -> Environment:
    ecs = boto3.client("ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    first = ecs.register_task_definition(
        family=FAMILY,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="512",
        memory="1024",
        executionRoleArn="arn:aws:iam::123456789012:role/onnx-ship-dev-execution",
        taskRoleArn="arn:aws:iam::123456789012:role/onnx-ship-dev-task",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "registry/onnx-ship-dev:bootstrap",
                "essential": True,
                "portMappings": [{"containerPort": 8080}],
                "environment": [{"name": "PORT", "value": "8080"}],
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=CLUSTER,
        serviceName=SERVICE,
        taskDefinition=first,
        desiredCount=1,
        launchType="FARGATE",
    )
    boto3.client("s3").create_bucket(Bucket="onnx-ship-dev")
    return Environment(
        environment="dev",
        aws_region="us-east-1",
        cluster_name=CLUSTER,
        service_name=SERVICE,
        task_family=FAMILY,
        container_name=CONTAINER,
        ecr_repository_url="127.0.0.1:5000/onnx-ship-dev",
        capture_url="s3://onnx-ship-dev/capture",
        deployments_url="s3://onnx-ship-dev/deployments",
        models_url="s3://onnx-ship-dev/models",
        endpoint_url=endpoint,
    )
