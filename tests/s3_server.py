"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for the object-store tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: What a client needs to reach the server, as the usual AWS environment (the test keys are moto's own).
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@contextmanager
def s3_server() -> Iterator[str]:
    """Start the server, point the AWS environment at it for the block (child processes included)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in (*ENVIRONMENT, "AWS_ENDPOINT_URL")}
    os.environ.update({**ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def create_bucket(name: str) -> None:
    """Create a bucket on the server the environment points at."""
    import boto3

    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)


def upload(folder: Path, url: str) -> str:
    """Copy every file under ``folder`` to the object-store prefix ``url``; return ``url``."""
    import obstore
    from obstore.store import from_url

    store = from_url(url)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        obstore.put(store, path.relative_to(folder).as_posix(), path.read_bytes())
    return url
