"""A local S3 endpoint for the media tests: moto's server, in this process, on 127.0.0.1.

moto stands in for a real S3 (or MinIO, R2, Ceph RGW): the same HTTP API, signed requests,
buckets kept in memory. The site talks to it exactly as to a real one, through
django-storages and boto3. Where it cannot start, the tests that need it are skipped with
the reason.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest

REGION = "us-east-1"
# Fake, but long enough that the log redaction treats the secret as one.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "karasu-test-access-key",
    "AWS_SECRET_ACCESS_KEY": "karasu-test-secret-0123456789abcdef",
}
AWS_ENV = {
    **CREDENTIALS,
    "AWS_DEFAULT_REGION": REGION,
    # Never look for real credentials or configuration on this machine.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_S3_SESSION_PROFILE",
    "AWS_S3_ACCESS_KEY_ID",
    "AWS_S3_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalS3:
    """moto's S3 server on 127.0.0.1 that can be stopped and started again on its port.

    Like moto's ThreadedMotoServer, but the port is bound in the caller's thread (a taken
    port raises instead of hanging), and every response closes its connection, so that
    once stopped nothing answers: no kept-alive connection outlives ``stop()``.
    """

    def __init__(self):
        try:
            from moto.moto_server.werkzeug_app import (
                DomainDispatcherApplication,
                MotoRequestHandler,
                create_backend_app,
            )
            from werkzeug.serving import make_server
        except ImportError as exc:
            pytest.skip(f"moto's S3 server cannot start: {exc} (pip install 'moto[server]')")

        class Handler(MotoRequestHandler):
            protocol_version = "HTTP/1.0"

            def log(self, *args, **kwargs):  # quiet: one line per request otherwise
                pass

        self._make_server = lambda port: make_server(
            "127.0.0.1",
            port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=Handler,
        )
        self.port = free_port()
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = self._make_server(self.port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"karasu-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", ()))

    def get(self, bucket: str, key: str):
        return self.client().get_object(Bucket=bucket, Key=key)


def started_s3() -> LocalS3:
    server = LocalS3()
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"moto's S3 server cannot start on 127.0.0.1: {exc}")
    return server
