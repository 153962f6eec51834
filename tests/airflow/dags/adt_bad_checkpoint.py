"""Uploads that find a corrupt or foreign checkpoint in their task state store.

Each task writes a bad value under the operator's checkpoint key before the operator runs, as a
damaged store, an older try of a reconfigured task or a buggy release might have left it. The upload
must say why it ignores the stored value and upload the whole file from the start.

Run by tests/airflow/test_dags.py with ``airflow dags test adt_bad_checkpoint -c '{"work": "<dir>"}'``;
the test writes ``<variant>.bin`` (6 MiB: two 5 MiB-sized parts) into ``work`` for every variant.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, Context, Param

from airflow_databricks_transfer.engine.checkpoint import (
    DownloadCheckpoint,
    RemoteVersion,
    SourceFingerprint,
    UploadCheckpoint,
)
from airflow_databricks_transfer.operators.files import LocalFilesystemToDatabricksVolumeOperator

MiB = 1024 * 1024
VOLUME_DIR = "/Volumes/main/default/landing/adt/bad_checkpoint"
KEY = "checkpoint"
VARIANTS = (
    "garbage",  # a JSON object of another schema
    "not_an_object",  # a bare string
    "missing_segment",  # a valid upload head whose segment was never written
    "future_version",  # a head written by a (hypothetical) newer release
    "download",  # a valid checkpoint of a download
    "other_destination",  # a valid upload checkpoint, for another file in the Volume
)


def bad_values(variant: str, local_path: str, volume_path: str) -> dict[str, Any]:
    """The task state store entries (key -> value) that ``variant`` plants before the upload."""
    source = SourceFingerprint.of(local_path)
    part = 5 * MiB
    upload = UploadCheckpoint(volume_path, source, part, -(-source.size // part), "no-such-session")
    if variant == "garbage":
        return {KEY: {"schema": "x"}}
    if variant == "not_an_object":
        return {KEY: "definitely not a checkpoint"}
    if variant == "missing_segment":
        return {KEY: upload.with_part(1, '"' + "0" * 32 + '"').head_record()}
    if variant == "future_version":
        return {KEY: {**upload.head_record(), "version": 99}, f"{KEY}.seg.0": upload.segment_record(0)}
    if variant == "download":
        download = DownloadCheckpoint(
            source=volume_path,
            remote=RemoteVersion(source.size, '"abc"', None),
            destination=os.path.join(os.path.dirname(local_path), "elsewhere.bin"),
            temp_path=os.path.join(os.path.dirname(local_path), ".elsewhere.bin.part"),
            offset=0,
            length=source.size,
            chunk_size=MiB,
            done_chunks=frozenset({0, 1}),
        )
        return {KEY: download.to_dict()}
    if variant == "other_destination":
        other = UploadCheckpoint(
            f"{VOLUME_DIR}/someone_else.bin", source, part, upload.part_count, "no-such-session"
        ).with_part(1, '"' + "0" * 32 + '"')
        return {KEY: other.head_record(), f"{KEY}.seg.0": other.segment_record(0)}
    raise ValueError(f"unknown variant {variant!r}")


class PlantedCheckpointUpload(LocalFilesystemToDatabricksVolumeOperator):
    """Plants a bad checkpoint (on the first try only), then uploads as usual."""

    def __init__(self, *, variant: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = variant

    def execute(self, context: Context) -> dict[str, Any]:
        if context["ti"].try_number == 1:
            store = context["task_state_store"]
            for key, value in bad_values(self.variant, self.local_path, self.volume_path).items():
                store.set(key, value)
            self.log.info("ADT-TEST planted a %s checkpoint under %r", self.variant, KEY)
        return super().execute(context)


with DAG(
    dag_id="adt_bad_checkpoint",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"work": Param("/tmp/adt-bad-checkpoint", type="string")},
    tags=["test"],
) as dag:
    for name in VARIANTS:
        PlantedCheckpointUpload(
            task_id=name,
            variant=name,
            local_path=f"{{{{ params.work }}}}/{name}.bin",
            volume_path=f"{VOLUME_DIR}/{name}.bin",
            part_size_bytes=5 * MiB,
            multipart_threshold_bytes=5 * MiB,
            retries=0,
        )
