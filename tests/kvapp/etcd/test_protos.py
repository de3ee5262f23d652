"""kvapp.etcdpb: the committed generated modules are current, load, and speak etcd's wire format."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from kvapp.etcdpb import generate


def test_regenerating_gives_the_committed_modules(tmp_path: Path) -> None:
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("grpcio-tools is not installed (pip install -e '.[test]')")
    produced = generate.generate(tmp_path)
    stale = [
        name
        for name in generate.generated_files()
        if (produced / name).read_bytes() != (generate.PACKAGE_DIR / name).read_bytes()
    ]
    assert not stale, (
        f"kvapp/etcdpb: {', '.join(stale)} differ from what the .proto files generate; "
        "run python3 -m kvapp.etcdpb.generate and commit the result"
    )


def test_generated_modules_load_with_the_installed_runtimes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the protobuf runtime version check warns or raises
        from kvapp.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

    assert rpc_pb2.DESCRIPTOR.package == "etcdserverpb"
    assert kv_pb2.DESCRIPTOR.package == "mvccpb"
    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth"}
    assert services["KV"].methods_by_name["Compact"].input_type.full_name == (
        "etcdserverpb.CompactionRequest"
    )
    assert hasattr(rpc_pb2_grpc, "KVStub")


def test_field_numbers_match_etcd_bytes() -> None:
    """A few messages encoded by hand from etcd's field numbers (spot checks of the schema)."""
    from kvapp.etcdpb import kv_pb2, rpc_pb2

    # RangeRequest: key=1 (bytes), range_end=2, limit=3, revision=4, keys_only=8.
    req = rpc_pb2.RangeRequest(key=b"a", range_end=b"b", limit=5, revision=7, keys_only=True)
    assert req.SerializeToString() == b"\n\x01a\x12\x01b\x18\x05\x20\x07\x40\x01"
    # Compare.range_end is field 64 (tag 0x82 0x04 for a length-delimited field).
    cmp = rpc_pb2.Compare(key=b"k", range_end=b"z", version=1)
    assert cmp.SerializeToString() == b"\x1a\x01k\x20\x01\x82\x04\x01z"
    # WatchResponse.events is field 11; KeyValue.lease is field 6.
    wr = rpc_pb2.WatchResponse(events=[kv_pb2.Event(kv=kv_pb2.KeyValue(lease=3))])
    assert wr.SerializeToString() == b"\x5a\x04\x12\x02\x30\x03"
    # Member: ID=1 (uint64), clientURLs=4, isLearner=5.
    m = rpc_pb2.Member(ID=2**64 - 1, clientURLs=["u"], isLearner=True)
    assert m.SerializeToString() == b"\x08" + b"\xff" * 9 + b"\x01" + b"\x22\x01u\x28\x01"
