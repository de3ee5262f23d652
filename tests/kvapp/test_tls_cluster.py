"""``kvapp cluster --tls``: a local cluster with a throwaway CA (made with openssl), TLS on every
link and client certificates required; its printed commands carry etcdctl's TLS flags, and
etcd 3.4's own etcdctl (Debian's ``etcd-client``) works with them and fails without them.

Runs the launcher in-process (three real ``kvapp serve`` processes on 127.0.0.1), waits with
bounds, and stops the cluster through its stop event.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
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


async def _etcdctl(*args: str) -> tuple[int, str, str]:
    """Run etcdctl (for at most 30 s); its exit status, standard output and standard error."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _watch_one_event(command: list[str], key: str, put: list[str]) -> list[str]:
    """``etcdctl watch KEY`` (with ``command``'s flags) sees the ``put`` made after it started."""
    watch = await asyncio.create_subprocess_exec(
        *command, "watch", key,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    assert watch.stdout is not None
    seen: list[str] = []
    try:
        # The watch may not be registered yet when the first put lands: put until it is seen.
        async with asyncio.timeout(20):
            while not seen:
                status, _, err = await _etcdctl(*command, *put)
                assert status == 0, err
                try:
                    async with asyncio.timeout(1):
                        while len(seen) < 3:
                            line = await watch.stdout.readline()
                            assert line, f"etcdctl watch ended: {seen}"
                            seen.append(line.decode().rstrip("\n"))
                except TimeoutError:
                    seen.clear()
    finally:
        watch.kill()
        await watch.wait()
    return seen


@pytest.mark.timeout(300)
def test_etcdctl_speaks_tls_to_kvapp_cluster_tls_and_is_refused_without_a_certificate(
    tmp_path: Path,
) -> None:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcdctl is missing: .ci/run installs Debian's etcd-client package")
        pytest.skip("etcdctl is not installed (apt-get install etcd-client)")
    parent = tmp_path / "cluster"
    lines: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_local_cluster(3, parent, fsync=False, out=lines.append, stop=stop, tls=True)
        )
        try:
            await _until(lines, r"^leader is m\d", task, 60)
            # The command line the cluster printed, as printed (its endpoints and TLS flags).
            printed = next(line for line in lines if "etcdctl --endpoints=" in line)
            words = shlex.split(printed)
            command = [etcdctl, *words[words.index("etcdctl") + 1 : -2], "--command-timeout=10s"]
            assert words[-2:] == ["get", "hello"], printed
            assert {"--cacert", "--cert", "--key"} <= set(command), printed
            endpoints = next(w for w in command if w.startswith("--endpoints="))
            grpc = endpoints.removeprefix("--endpoints=").split(",")
            assert len(grpc) == 3, printed
            assert all(u.startswith("https://") for u in grpc), printed

            async def ok(*args: str) -> str:
                status, out, err = await _etcdctl(*command, *args)
                assert status == 0, f"etcdctl {' '.join(args)}: {err}"
                return out

            assert await ok("put", "tls/k", "v") == "OK\n"
            assert await ok("get", "tls/k") == "tls/k\nv\n"
            seen = await _watch_one_event(command, "tls/w", ["put", "tls/w", "seen"])
            assert seen == ["PUT", "tls/w", "seen"], seen

            # Without a client certificate (trusting the CA): refused, and nothing written.
            cert = command.index("--cert")
            anonymous = command[:cert] + command[cert + 4 :]
            assert not {"--cert", "--key"} & set(anonymous), anonymous
            anonymous = [*anonymous, "--command-timeout=2s", "--dial-timeout=1s"]
            status, out, err = await _etcdctl(*anonymous, "put", "tls/anonymous", "x")
            assert status != 0, f"etcdctl put without a certificate: {out}"
            assert "Error: context deadline exceeded" in err, err
            assert out == "", out
            assert await ok("get", "tls/anonymous") == ""

            # Each member publishes its name and client URLs once started: wait for all three.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                members = json.loads(await ok("member", "list", "-w", "json"))["members"]
                urls = sorted(u for m in members for u in m.get("clientURLs", ()))
                if urls == sorted(grpc) or loop.time() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert urls == sorted(grpc), f"member list never showed every client URL: {members}"
            assert sorted(m["name"] for m in members) == ["m1", "m2", "m3"], members
            assert all(u.startswith("https://") for m in members for u in m["peerURLs"]), members
            statuses = json.loads(await ok("endpoint", "status", "-w", "json"))
            assert sorted(s["Endpoint"] for s in statuses) == sorted(grpc), statuses
            leaders = {s["Status"]["leader"] for s in statuses}
            assert len(leaders) == 1, statuses
            assert leaders <= {s["Status"]["header"]["member_id"] for s in statuses}, statuses
        finally:
            stop.set()
            status = await asyncio.wait_for(task, 60)
        assert status == 0, lines

    asyncio.run(main())


def test_kvapp_cluster_tls_refuses_a_plaintext_clusters_directory(tmp_path: Path) -> None:
    plan_cluster(1, tmp_path)
    lines: list[str] = []
    status = asyncio.run(run_local_cluster(1, tmp_path, out=lines.append, tls=True))
    assert status == 2
    assert "holds a cluster made without --tls" in lines[0]
