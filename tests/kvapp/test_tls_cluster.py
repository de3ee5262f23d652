"""``kvapp cluster --tls``: a local cluster with a throwaway CA (made with openssl), TLS on every
link and client certificates required; its printed commands carry etcdctl's TLS flags.

Runs the launcher in-process (three real ``kvapp serve`` processes on 127.0.0.1), waits with
bounds, and stops the cluster through its stop event.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from kvapp.client import AsyncClient, Unavailable
from kvapp.launcher import plan_cluster, run_local_cluster
from kvapp.tls import ClientTls

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


async def _until(lines: list[str], pattern: str, task: asyncio.Task[int], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not any(re.search(pattern, line) for line in lines):
        if task.done():
            raise AssertionError(f"the cluster ended ({task.result()}):\n" + "\n".join(lines))
        if loop.time() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in {within}s:\n" + "\n".join(lines))
        await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
def test_kvapp_cluster_tls_serves_only_clients_with_certificates(tmp_path: Path) -> None:
    parent = tmp_path / "cluster"
    lines: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_local_cluster(3, parent, fsync=False, out=lines.append, stop=stop, tls=True)
        )
        try:
            await _until(lines, r"^leader is m\d", task, 60)
            pki = parent / "pki"
            tls = ClientTls(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
            native = [
                m.group(1) for line in lines if (m := re.search(r"client https://(\S+)", line))
            ]
            grpc = [m.group(1) for line in lines if (m := re.search(r"grpc https://(\S+)", line))]
            assert len(native) == len(grpc) == 3, lines
            async with AsyncClient(native, tls=tls) as client:
                await client.put(b"hello", b"world")
            async with AsyncClient(grpc, protocol="etcd", tls=tls) as client:
                assert (await client.get(b"hello")).kvs[0].value == b"world"
            async with AsyncClient(native, max_attempts=1, connect_timeout=2) as plain:
                with pytest.raises(Unavailable):
                    await plain.get(b"hello")
        finally:
            stop.set()
            status = await asyncio.wait_for(task, 60)
        assert status == 0, lines

    asyncio.run(main())
    printed = "\n".join(lines)
    assert f"--cacert {parent}/pki/ca.pem --cert {parent}/pki/client.pem" in printed
    assert "etcdctl --endpoints=https://127.0.0.1:" in printed
    plan = json.loads((parent / "cluster.json").read_text())
    assert all(m["tls"] for m in plan["members"])
    _, members = plan_cluster(3, parent)  # the plan keeps TLS without the flag
    assert all(m.tls and m.peer_url.startswith("https://") for m in members)


def test_kvapp_cluster_tls_refuses_a_plaintext_clusters_directory(tmp_path: Path) -> None:
    plan_cluster(1, tmp_path)
    lines: list[str] = []
    status = asyncio.run(run_local_cluster(1, tmp_path, out=lines.append, tls=True))
    assert status == 2
    assert "holds a cluster made without --tls" in lines[0]
