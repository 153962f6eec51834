"""Regenerate ``zerobus_service_pb2.py``/``.pyi`` from ``zerobus_service.proto``.

Run with grpcio-tools 1.62.x importable (its protoc emits protobuf 4.25 code, which loads on every
protobuf runtime the Zerobus SDK accepts, 4.25 to 6.x, without a runtime version check), e.g.
``uv pip install --target /tmp/gt grpcio-tools==1.62.3`` and
``PYTHONPATH=/tmp/gt python -m airflow_databricks_transfer.testing.zerobus.proto``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    import grpc_tools  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - build tool only
    from grpc_tools import protoc  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    repo = Path(__file__).resolve().parents[4]
    proto = Path(__file__).with_name("zerobus_service.proto").relative_to(repo)
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{repo}", f"-I{include}", f"--python_out={repo}", f"--pyi_out={repo}", str(proto)]
    return int(protoc.main(args))


if __name__ == "__main__":
    sys.exit(main())
