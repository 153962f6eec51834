"""Part sizing: within backend limits, memory-bounded, every byte covered exactly once."""

from __future__ import annotations

import pytest

from airflow_databricks_transfer.engine.planning import (
    AZURE_BLOCKS,
    DEFAULT_PART_SIZE_BYTES,
    FILES_API_S3,
    GiB,
    MiB,
    choose_part_size,
    part_ranges,
    plan_upload,
    range_plan,
)


@pytest.mark.parametrize("size", [0, 1, 49 * MiB])
def test_small_files_go_single_shot(size: int) -> None:
    plan = plan_upload(size)
    assert plan.mode == "single" and plan.part_count == 1


def test_large_files_use_default_part_size() -> None:
    plan = plan_upload(2 * GiB)
    assert plan.mode == "multipart"
    assert plan.part_size == DEFAULT_PART_SIZE_BYTES
    assert plan.part_count == 128


def test_part_size_grows_to_respect_the_part_limit() -> None:
    size = 5 * 1024 * GiB  # 5 TiB: 16 MiB parts would need 327,680 parts
    part = choose_part_size(size, FILES_API_S3)
    assert part % MiB == 0
    assert -(-size // part) <= FILES_API_S3.max_parts
    assert part - MiB < -(-size // FILES_API_S3.max_parts)  # no larger than needed, to bound memory
    azure = choose_part_size(size, AZURE_BLOCKS)
    assert -(-size // azure) <= AZURE_BLOCKS.max_parts and azure < part


def test_requested_part_size_is_honoured_or_refused() -> None:
    assert plan_upload(100 * MiB, part_size=8 * MiB).part_size == 8 * MiB
    with pytest.raises(ValueError, match="below the files-api minimum"):
        plan_upload(100 * MiB, part_size=1 * MiB)
    with pytest.raises(ValueError, match="do not fit"):
        choose_part_size(60_000 * 5 * GiB, FILES_API_S3)


def test_above_single_shot_limit_is_always_multipart() -> None:
    plan = plan_upload(6 * GiB, multipart_threshold=10 * GiB)
    assert plan.mode == "multipart"


@pytest.mark.parametrize(("size", "part"), [(1, 5), (10, 5), (11, 5), (5 * MiB + 3, MiB)])
def test_part_ranges_cover_every_byte_once(size: int, part: int) -> None:
    ranges = list(part_ranges(size, part))
    assert [n for n, _, _ in ranges] == list(range(1, len(ranges) + 1))
    covered = [b for _, off, ln in ranges for b in range(off, off + ln)] if size < 100 else None
    if covered is not None:
        assert covered == list(range(size))
    assert sum(ln for _, _, ln in ranges) == size
    assert all(ln == part for _, _, ln in ranges[:-1])


def test_range_plan_supports_partial_downloads() -> None:
    assert range_plan(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert range_plan(10, 4, offset=3, length=5) == [(3, 4), (7, 1)]
    assert range_plan(10, 4, offset=10) == []
    with pytest.raises(ValueError):
        range_plan(10, 4, offset=11)
