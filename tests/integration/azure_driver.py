"""Run one Azure engine transfer in its own process (so a test can SIGKILL it), checkpointing to a file.

python azure_driver.py '<json spec>'  with the connection string in $ADT_TEST_AZURE_CS (not in argv).

Spec keys: mode ("upload": local file -> blob; "to_volume": blob -> Files API volume), container, blob,
checkpoint, part_size, parallelism, rate (bytes/s, 0 = unlimited), checkpoint_interval_s; "upload" also
takes source; "to_volume" takes files_host, files_token, volume_path.

Prints one JSON object: the engine's result and what this process sent to Azure, counted by a request
hook on the client: the part numbers of its Put Block calls and how many ranged GETs it made.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobServiceClient, ExponentialRetry

from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient, BlobRef
from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink
from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.sources import RemoteRangeSource
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions

FAST_RETRY = RetryPolicy(base_delay_s=0.05, max_delay_s=0.2, max_retry_after_s=2)


KINDS = {"upload": "azure_blob.upload", "to_volume": "azure_blob.to_volume"}


class RequestCounter:
    """A raw_request_hook: what this process asked of Azure (requests, not connections)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.put_blocks: list[int] = []
        self.ranged_gets = 0

    def __call__(self, request: Any) -> None:
        http = request.http_request
        query = parse_qs(urlsplit(http.url).query)
        with self.lock:
            if http.method == "PUT" and query.get("comp") == ["block"]:
                block = base64.b64decode(query["blockid"][0]).decode()
                self.put_blocks.append(int(block.rsplit("-", 1)[1]))
            elif http.method == "GET" and ("x-ms-range" in http.headers or "Range" in http.headers):
                self.ranged_gets += 1


def main() -> int:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    counter = RequestCounter()
    service = BlobServiceClient.from_connection_string(
        os.environ["ADT_TEST_AZURE_CS"],
        retry_policy=ExponentialRetry(retry_total=0),
        raw_request_hook=counter,
    )
    azure = AzureBlobClient(service)
    ref = BlobRef(spec["container"], spec["blob"])
    kind = KINDS[spec["mode"]]
    sink = FileCheckpointSink(spec["checkpoint"], UploadCheckpoint, kind)
    rate = float(spec.get("rate", 0))
    options = UploadOptions(
        part_size_bytes=int(spec["part_size"]),
        parallelism=int(spec.get("parallelism", 2)),
        multipart_threshold_bytes=1,
        bandwidth_limit_bytes_per_s=rate if rate > 0 else None,
        retry=FAST_RETRY,
        checkpoint_interval_s=float(spec.get("checkpoint_interval_s", 0)),
    )
    if spec["mode"] == "upload":
        uploader = Uploader(
            azure.upload_target(ref),
            spec["source"],
            replace(options, limits=AZURE_BLOCKS),
            sink=sink,
            kind=kind,
        )
    else:
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.core import Config

        from airflow_databricks_transfer.clients.files_api import FilesApiClient

        files = FilesApiClient(
            WorkspaceClient(
                config=Config(host=spec["files_host"], token=spec["files_token"], retry_timeout_seconds=10)
            )
        )
        uploader = Uploader(
            files.upload_target(spec["volume_path"]),
            RemoteRangeSource(azure.download_source(ref)),
            options,
            sink=sink,
            kind=kind,
        )
    result = uploader.run(sink.load())
    json.dump(
        {"result": result.to_dict(), "put_blocks": counter.put_blocks, "ranged_gets": counter.ranged_gets},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
