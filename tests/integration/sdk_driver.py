"""Drive the official databricks-sdk against an emulator, in a subprocess.

Run with PYTHONPATH pointing at a side-installed SDK to exercise another protocol generation. Reads one
JSON document from stdin: {"host", "token", "config": {attr: value}, "ops": [...]} and prints
{"version", "results": [...]} where each result is the op's value or {"error": type, "message": ...}.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config
from databricks.sdk.version import __version__


def run_op(w: WorkspaceClient, op: dict[str, Any]) -> Any:
    kind = op["op"]
    path = op.get("path", "")
    if kind == "upload":
        kwargs: dict[str, Any] = {"overwrite": op.get("overwrite", True)}
        if op.get("part_size"):
            kwargs["part_size"] = op["part_size"]
        if "parallel" in op:
            kwargs["use_parallel"] = op["parallel"]
            if op["parallel"] and op.get("parallelism"):
                kwargs["parallelism"] = op["parallelism"]
        if op.get("stream"):
            with open(op["src"], "rb") as f:
                w.files.upload(path, f, **kwargs)
        else:
            w.files.upload_from(path, op["src"], **kwargs)
        return "ok"
    if kind == "download":
        mode = op.get("mode", "stream")
        if mode == "stream":
            resp = w.files.download(path)
            assert resp.contents is not None
            with open(op["dst"], "wb") as out:
                shutil.copyfileobj(resp.contents, out, 1024 * 1024)
        else:
            w.files.download_to(path, op["dst"], overwrite=True, use_parallel=mode == "parallel")
        return "ok"
    if kind == "metadata":
        meta = w.files.get_metadata(path)
        return {
            "content_length": meta.content_length,
            "content_type": meta.content_type,
            "last_modified": meta.last_modified,
        }
    if kind == "list":
        return sorted(
            (
                {"name": e.name, "path": e.path, "is_directory": e.is_directory, "file_size": e.file_size}
                for e in w.files.list_directory_contents(path, page_size=op.get("page_size"))
            ),
            key=lambda e: str(e["name"]),
        )
    if kind == "delete":
        w.files.delete(path)
        return "ok"
    if kind == "mkdir":
        w.files.create_directory(path)
        return "ok"
    if kind == "rmdir":
        w.files.delete_directory(path)
        return "ok"
    if kind == "dir_exists":
        w.files.get_directory_metadata(path)
        return "ok"
    if kind == "create_volume":
        catalog, schema, name = op["name"].split(".")
        w.schemas.create(name=schema, catalog_name=catalog)
        info = w.volumes.create(
            catalog_name=catalog, schema_name=schema, name=name, volume_type=_volume_type("MANAGED")
        )
        return info.full_name
    if kind == "delete_volume":
        w.volumes.delete(op["name"])
        return "ok"
    raise ValueError(f"unknown op {kind}")


def _volume_type(name: str) -> Any:
    from databricks.sdk.service.catalog import VolumeType

    return VolumeType(name)


def main() -> int:
    spec = json.load(sys.stdin)
    cfg = Config(host=spec["host"], token=spec["token"], retry_timeout_seconds=30)
    for attr, value in spec.get("config", {}).items():
        setattr(cfg, attr, value)  # files_ext_* are plain attributes, ignored as kwargs
    w = WorkspaceClient(config=cfg)
    results: list[Any] = []
    for op in spec["ops"]:
        try:
            results.append(run_op(w, op))
        except Exception as err:  # noqa: BLE001 - report it; the test decides what was expected
            results.append({"error": type(err).__name__, "message": str(err)[:500]})
    json.dump({"version": __version__, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
