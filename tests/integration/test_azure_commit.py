"""Put Block List with overwrite off (Azurite): a blob another writer created during the upload is
never replaced, and a commit repeated after its answer was lost is recognised as this upload's own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from airflow_databricks_transfer.clients.azure_blob import AzureBlobClient, AzureBlobUploadTarget, BlobRef
from airflow_databricks_transfer.engine.errors import AlreadyExistsError, ConnectionLostError
from airflow_databricks_transfer.engine.planning import AZURE_BLOCKS
from airflow_databricks_transfer.engine.retry import RetryPolicy
from airflow_databricks_transfer.engine.upload import Uploader, UploadOptions
from tests.integration.conftest import MiB, make_file, sha256_file

pytestmark = pytest.mark.integration

OPTS = UploadOptions(
    part_size_bytes=4 * MiB,
    multipart_threshold_bytes=1,
    overwrite=False,
    limits=AZURE_BLOCKS,
    retry=RetryPolicy(max_attempts=3, base_delay_s=0.05, max_delay_s=0.1),
)


class RacedTarget(AzureBlobUploadTarget):
    """The real target; ``before_commit`` runs just before each Put Block List goes out."""

    def __init__(self, *args: object, before_commit: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.before_commit = before_commit
        self.commits = 0

    def complete(
        self, token: str, parts: Sequence[tuple[int, str]], *, content_md5: bytes | None = None
    ) -> None:
        self.commits += 1
        self.before_commit(self, token, parts, content_md5)  # type: ignore[operator]
        super().complete(token, parts, content_md5=content_md5)


def test_a_blob_created_during_the_upload_is_not_replaced(
    direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 10 * MiB, seed=1)

    def other_writer(target: RacedTarget, *_: object) -> None:
        direct.get_blob_client(container, "race.bin").upload_blob(b"the other writer's bytes", overwrite=True)

    target = RacedTarget(
        AzureBlobClient(direct), BlobRef(container, "race.bin"), overwrite=False, before_commit=other_writer
    )
    with pytest.raises(AlreadyExistsError, match="not replaced"):
        Uploader(target, src, OPTS, kind="azure_blob.upload").run()
    kept = direct.get_blob_client(container, "race.bin").download_blob().readall()
    assert kept == b"the other writer's bytes"


def test_a_commit_repeated_after_a_lost_answer_counts_as_done(
    direct: BlobServiceClient, container: str, tmp_path: Path
) -> None:
    src = make_file(tmp_path / "src.bin", 10 * MiB, seed=2)

    def lose_first_answer(
        target: RacedTarget, token: str, parts: Sequence[tuple[int, str]], md5: bytes | None
    ) -> None:
        if target.commits == 1:  # the commit lands, its answer never arrives
            AzureBlobUploadTarget.complete(target, token, parts, content_md5=md5)
            raise ConnectionLostError("answer of Put Block List lost")

    target = RacedTarget(
        AzureBlobClient(direct),
        BlobRef(container, "lost.bin"),
        overwrite=False,
        before_commit=lose_first_answer,
    )
    result = Uploader(target, src, OPTS, kind="azure_blob.upload").run()
    assert target.commits == 2 and result.retries == 1
    out = tmp_path / "out.bin"
    out.write_bytes(direct.get_blob_client(container, "lost.bin").download_blob().readall())
    assert sha256_file(out) == sha256_file(src)
