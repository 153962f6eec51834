"""Part sizing within each backend's limits, with memory bounded by parallelism x part size."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class BackendLimits:
    name: str
    max_parts: int
    min_part_size_bytes: int
    max_part_size_bytes: int
    max_single_shot_bytes: int


# S3-style multipart behind the Files API presigned URLs (also the Files API 3.0 part rules).
FILES_API_S3 = BackendLimits("files-api", 10_000, 5 * MiB, 5 * GiB, 5 * GiB)
# Azure block blobs: 50,000 blocks of at most 4000 MiB; Put Blob takes up to 5000 MiB.
AZURE_BLOCKS = BackendLimits("azure-blob", 50_000, 1, 4000 * MiB, 5000 * MiB)

# Defaults measured on the reference VM: 16 MiB parts on 4 workers reached 2.3 GB/s at 84 MiB RSS,
# larger parts only cost memory (perf_anchors.md section 5.1).
DEFAULT_PART_SIZE_BYTES = 16 * MiB
DEFAULT_MULTIPART_THRESHOLD_BYTES = 50 * MiB  # the databricks-sdk's own threshold
PART_ALIGNMENT_BYTES = MiB


@dataclass(frozen=True)
class UploadPlan:
    mode: Literal["single", "multipart"]
    size: int
    part_size: int
    part_count: int

    def parts(self) -> Iterator[tuple[int, int, int]]:
        """(part_number, offset, length) for every part, numbered from 1."""
        yield from part_ranges(self.size, self.part_size)


def part_ranges(size: int, part_size: int) -> Iterator[tuple[int, int, int]]:
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    count = max(1, math.ceil(size / part_size))
    for i in range(count):
        offset = i * part_size
        yield i + 1, offset, max(0, min(part_size, size - offset))


def choose_part_size(size: int, limits: BackendLimits, requested: int | None = None) -> int:
    """The requested (or default) part size, raised just enough to stay within ``max_parts``."""
    part = requested if requested is not None else DEFAULT_PART_SIZE_BYTES
    if part <= 0:
        raise ValueError("part size must be positive")
    if requested is not None and requested < limits.min_part_size_bytes:
        raise ValueError(
            f"part size {requested} is below the {limits.name} minimum of {limits.min_part_size_bytes} bytes"
        )
    part = max(part, limits.min_part_size_bytes)
    needed = math.ceil(size / limits.max_parts) if size else 0
    if needed > part:
        part = math.ceil(needed / PART_ALIGNMENT_BYTES) * PART_ALIGNMENT_BYTES
    if part > limits.max_part_size_bytes:
        raise ValueError(
            f"{size} bytes do not fit in {limits.max_parts} parts of at most "
            f"{limits.max_part_size_bytes} bytes ({limits.name})"
        )
    return part


def plan_upload(
    size: int,
    limits: BackendLimits = FILES_API_S3,
    *,
    part_size: int | None = None,
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
) -> UploadPlan:
    """Single-shot below the threshold (never above the backend's single-shot limit), else multipart."""
    if size < 0:
        raise ValueError("size must be non-negative")
    if size < max(multipart_threshold, 1) and size <= limits.max_single_shot_bytes:
        return UploadPlan("single", size, max(size, 1), 1)
    chosen = choose_part_size(size, limits, part_size)
    return UploadPlan("multipart", size, chosen, max(1, math.ceil(size / chosen)))


def range_plan(
    size: int, chunk_size: int, offset: int = 0, length: int | None = None
) -> list[tuple[int, int]]:
    """(start, length) chunks covering [offset, offset+length) of an object of ``size`` bytes."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    end = size if length is None else min(size, offset + length)
    if offset < 0 or offset > size:
        raise ValueError(f"offset {offset} is outside an object of {size} bytes")
    return [(s, min(chunk_size, end - s)) for s in range(offset, end, chunk_size)]
