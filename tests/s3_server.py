"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for the object-store tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
    """Start the server in a process of its own, point the AWS environment at it for the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in (*ENVIRONMENT, "AWS_ENDPOINT_URL")}
    try:
        _wait_until_up(endpoint, server)
        os.environ.update({**ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint})
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)


def _wait_until_up(endpoint: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the S3 server at {endpoint} did not start (exit status {server.poll()})")


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


def copy_prefix(source: str, dest: str) -> str:
    """Copy every object under the prefix ``source`` to the same key under ``dest`` (same bucket)."""
    import obstore
    from obstore.store import from_url

    bucket = source.split("/")[2]
    store = from_url(f"s3://{bucket}")
    src, dst = source.split("/", 3)[3], dest.split("/", 3)[3]
    for batch in obstore.list(store, prefix=f"{src}/"):
        for meta in batch:
            obstore.copy(store, meta["path"], f"{dst}/{meta['path'][len(src) + 1 :]}")
    return dest
