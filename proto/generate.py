"""Regenerate the checked-in gRPC code from proto/ (``python proto/generate.py [OUT]``).

Runs ``python -m grpc_tools.protoc`` (grpcio-tools is pinned in pyproject, so the output is
reproducible) and writes ``rlfleet/v1/*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under
OUT (default: the repository root). tests/test_proto_fresh.py regenerates into a temporary
directory and fails when the checked-in files differ, so the generated code cannot go stale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def protos() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    """Write the generated modules for every .proto under proto/ into ``out``."""
    from grpc_tools import protoc

    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    include = Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        # Paths relative to -I, so generated imports read `from rlfleet.v1 import ...`.
        *(str(p.relative_to(PROTO_ROOT)) for p in protos()),
    ]
    proc = subprocess.run(cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"protoc failed:\n{proc.stderr}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
