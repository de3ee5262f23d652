"""Regenerate the Python modules of :mod:`kvapp.etcdpb` from its ``.proto`` files.

Run ``python3 -m kvapp.etcdpb.generate`` after editing a ``.proto`` file and commit the result;
``tests/kvapp/etcd/test_protos.py`` fails while the committed modules differ from what this
produces. It needs ``grpcio-tools`` (the ``test`` extra pins the version whose output is
committed; another version may produce different, equally valid, code).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

__all__ = ["PROTOS", "SERVICE_PROTOS", "generate", "generated_files", "main"]

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parents[1]
PROTOS = ("kv.proto", "auth.proto", "rpc.proto", "v3lock.proto", "v3election.proto")
"""The sources, relative to this package."""
SERVICE_PROTOS = ("rpc.proto", "v3lock.proto", "v3election.proto")
"""The sources with services, which also get a ``*_pb2_grpc.py`` module of stubs."""


def generated_files() -> list[str]:
    """The names of the modules :func:`generate` writes, relative to this package."""
    names = []
    for proto in PROTOS:
        stem = proto.removesuffix(".proto")
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
        if proto in SERVICE_PROTOS:
            names.append(f"{stem}_pb2_grpc.py")
    return sorted(names)


def generate(out_dir: Path) -> Path:
    """Run protoc on :data:`PROTOS`; returns the directory holding the generated modules.

    The modules land in ``out_dir/kvapp/etcdpb/`` (protoc mirrors the import paths, which are
    relative to the repository root so that the generated imports are ``kvapp.etcdpb...``).

    Raises:
        ImportError: grpcio-tools is not installed.
        RuntimeError: protoc failed.
    """
    from grpc_tools import protoc  # noqa: PLC0415 - a build-time dependency only

    rel = [str((PACKAGE_DIR / p).relative_to(ROOT)) for p in PROTOS]
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    grpc_args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--grpc_python_out={out_dir}",
        *(str((PACKAGE_DIR / p).relative_to(ROOT)) for p in SERVICE_PROTOS),
    ]
    if protoc.main(grpc_args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(grpc_args)}")
    return out_dir / "kvapp" / "etcdpb"


def main() -> int:
    """Regenerate the committed modules in place."""
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        for name in generated_files():
            (PACKAGE_DIR / name).write_bytes((produced / name).read_bytes())
            print(f"wrote {PACKAGE_DIR / name}")  # noqa: T201 - a command-line tool
    return 0


if __name__ == "__main__":
    sys.exit(main())
