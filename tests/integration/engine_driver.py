"""Run one engine upload in its own process (so a test can SIGKILL it), checkpointing to a file.

python engine_driver.py HOST TOKEN SOURCE DESTINATION CHECKPOINT_FILE PART_SIZE PARALLELISM RATE_BPS
"""

from __future__ import annotations

import json
import sys

from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from airflow_databricks_transfer.clients.files_api import FilesApiClient
from airflow_databricks_transfer.engine.checkpoint import UploadCheckpoint
from airflow_databricks_transfer.engine.localstate import FileCheckpointSink
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions


def main() -> int:
    host, token, source, destination, ckpt, part_size, parallelism, rate = sys.argv[1:9]
    w = WorkspaceClient(config=Config(host=host, token=token, retry_timeout_seconds=10))
    client = FilesApiClient(w)
    sink = FileCheckpointSink(ckpt, UploadCheckpoint)
    options = UploadOptions(
        part_size_bytes=int(part_size),
        parallelism=int(parallelism),
        multipart_threshold_bytes=1,
        verify_sha256=True,
        bandwidth_limit_bytes_per_s=float(rate) if float(rate) > 0 else None,
    )
    result = Uploader(client.upload_target(destination), source, options, sink=sink).run(sink.load())
    json.dump(result.to_dict(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
