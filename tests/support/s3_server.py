"""An S3-compatible server on 127.0.0.1 (moto's server mode) for the object-storage tests.

:func:`s3_server` starts moto's threaded server on an ephemeral port and yields
the environment that points the AWS clients (pyarrow, botocore, s3fs) at it;
tests set it with ``monkeypatch`` or pass it to subprocesses. Buckets and
objects live in the server's memory and vanish when it stops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Run moto's S3 server on 127.0.0.1:<ephemeral>; yield the AWS_* environment that reaches it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    finally:
        server.stop()


def s3_client(env: dict[str, str]):
    """Return a boto3 S3 client for the server of ``env``."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload_folder(env: dict[str, str], folder: Path, bucket: str, prefix: str) -> None:
    """Create ``bucket`` (if needed) and copy every file under ``folder`` to ``s3://bucket/prefix/...``."""
    client = s3_client(env)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}",
                              Body=path.read_bytes())
