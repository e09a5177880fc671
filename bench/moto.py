"""A moto S3 server on 127.0.0.1 for the capture-on rows, and what capture wrote to it."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.processes import Processes, Server, child_env, free_port
from service.capture import partformat

BUCKET = "bench-capture"
PREFIX = "capture"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class CaptureStore:
    """Where the capture-on service writes: the env it needs and the bucket's URL."""

    server: Server

    @property
    def url(self) -> str:
        return f"s3://{BUCKET}/{PREFIX}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.server.url, **CREDENTIALS}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.server.url,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def written(self) -> dict[str, int]:
        """Objects, bytes and JSON Lines records under the capture prefix."""
        s3 = self.client()
        objects = size = records = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):
            for item in page.get("Contents", []):
                objects += 1
                size += item["Size"]
                if partformat.is_data(item["Key"].rsplit("/", 1)[-1]):
                    body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                    records += partformat.count(body)
        return {"objects": objects, "bytes": size, "records": records}


def start_store(processes: Processes, core: int | None) -> CaptureStore:
    """Start `python -m moto.server` on 127.0.0.1 and create the capture bucket."""
    port = free_port()
    server = processes.start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=child_env({}),
        port=port,
        ready_path="/moto-api/",
        core=core,
        # S3 stands in for a service on other machines: moto's CPU (milliseconds a PUT)
        # must not delay wrk's reading of an answer on the same core (SCHED_IDLE).
        idle=True,
    )
    store = CaptureStore(server)
    store.client().create_bucket(Bucket=BUCKET)
    return store
