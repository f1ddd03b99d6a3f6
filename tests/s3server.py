"""A real S3-compatible server on loopback for the tests: s3rver (npm, a Node.js server that
keeps objects in a folder), installed by `make install-dev` into .venv/s3server. It speaks
the S3 HTTP protocol to boto3 over a real socket, so django-storages' S3 backend runs
exactly as it would against MinIO or AWS."""

import os
import socket
import subprocess
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / ".venv" / "s3server" / "node_modules" / ".bin" / "s3rver"
KEY = "S3RVER"  # s3rver's own fixed credentials
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class S3Server:
    """One s3rver process with one bucket; `env` is what a site process needs to use it."""

    def __init__(self, folder: Path, bucket: str = "classifier") -> None:
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run `make install-dev` (it installs s3rver with npm)")
        self.bucket = bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [str(BINARY), "-d", str(folder), "-a", "127.0.0.1", "-p", str(self.port), "--silent"]
        # Node 17+ refuses the legacy hash s3rver's signing check uses without this provider.
        env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=KEY, aws_secret_access_key=KEY, region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )  # fmt: skip
        self._create_bucket()

    def _create_bucket(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.create_bucket(Bucket=self.bucket)
                return
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_STORAGE_BUCKET_NAME": self.bucket, "AWS_S3_ENDPOINT_URL": self.url, "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": KEY,
        }  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
