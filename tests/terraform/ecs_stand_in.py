"""What ECS would run for one service, on loopback: moto's ECS runs no containers.

A thread watches the service (DescribeServices, as an administrator); whenever it
points at a revision whose container environment names a model, the stand-in stops
the task it runs and starts `python -m service` with that environment, as ECS starts
a task: the model comes from MODEL_URL (the environment bucket's models/), captures
go to PREDICTION_LOG_URL, and every AWS call runs with the task role's credentials.
The container's `secrets` are read as the ECS agent reads them, with the execution
role's credentials, and become environment variables holding the secret's string (ECS
developer guide, "Pass Secrets Manager secrets through Amazon ECS environment
variables"); a refused read stops the task from starting, as it does on Fargate.
Only HOST, PORT and MODEL_CACHE_DIR are replaced with local ones.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.service.conftest import Server, start_server

POLL_SECONDS = 0.5


class TaskStandIn:
    def __init__(
        self,
        ecs: Any,
        outputs: Mapping[str, Any],
        port: int,
        aws_environment: Mapping[str, str],
        cache_dir: Path,
        execution_aws: Mapping[str, str],
    ) -> None:
        self._ecs = ecs
        self._cluster = outputs["cluster_name"]
        self._service = outputs["service_name"]
        self._container = outputs["container_name"]
        self._port = port
        self._aws = dict(aws_environment)
        self._cache_dir = cache_dir
        self._execution_aws = dict(execution_aws)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self.url = f"http://127.0.0.1:{port}"
        self.server: Server | None = None
        self.revision = ""
        self.errors: list[str] = []

    def start(self) -> TaskStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching, then the running task (SIGTERM: the service flushes its capture)."""
        self._stop.set()
        self._thread.join(timeout=30)
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                service = self._ecs.describe_services(
                    cluster=self._cluster, services=[self._service]
                )["services"][0]
                if service["taskDefinition"] != self.revision:
                    self._run(service["taskDefinition"])
            except Exception as error:  # reported by the test, which then fails
                self.errors.append(f"{error.__class__.__name__}: {error}")
                return

    def _run(self, revision: str) -> None:
        definition = self._ecs.describe_task_definition(taskDefinition=revision)
        container = next(
            c
            for c in definition["taskDefinition"]["containerDefinitions"]
            if c["name"] == self._container
        )
        environment = {item["name"]: item["value"] for item in container["environment"]}
        environment.update(self._secrets(container))
        self.revision = revision
        if not environment.get("MODEL_URL"):
            return  # Terraform's first revision names no model: ECS could not start it either
        if self.server is not None:
            self.server.stop()
            self.server = None
        environment.update(
            self._aws,
            HOST="127.0.0.1",
            PORT=str(self._port),
            MODEL_CACHE_DIR=str(self._cache_dir),
        )
        self.server = start_server(environment, port=self._port)

    def _secrets(self, container: Mapping[str, Any]) -> dict[str, str]:
        """Each `secrets` entry's value, read with the execution role's credentials."""
        if not container.get("secrets"):
            return {}
        import boto3

        session = boto3.Session(
            aws_access_key_id=self._execution_aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self._execution_aws["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self._execution_aws.get("AWS_SESSION_TOKEN"),
            region_name=self._aws.get("AWS_DEFAULT_REGION", "us-east-1"),
        )
        endpoint = self._aws.get("AWS_ENDPOINT_URL")
        values = {}
        for item in container["secrets"]:
            source = item["valueFrom"]
            if source.startswith("arn:aws:secretsmanager:"):
                client = session.client("secretsmanager", endpoint_url=endpoint)
                values[item["name"]] = client.get_secret_value(SecretId=source)["SecretString"]
            else:  # a Systems Manager parameter, by ARN or name
                client = session.client("ssm", endpoint_url=endpoint)
                parameter = client.get_parameter(Name=source, WithDecryption=True)["Parameter"]
                values[item["name"]] = parameter["Value"]
        return values
