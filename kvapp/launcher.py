"""``kvapp cluster``: start a local N-member cluster on 127.0.0.1 in one command.

Each member is a real ``kvapp serve`` process (the same thing an operator runs), with its data
in ``<parent>/<name>`` and its log in ``<parent>/<name>.log``. The launcher prints the endpoints
and how to connect, reports membership and leader changes as they happen, and on Ctrl-C (or
SIGTERM) stops every member with SIGTERM (a leader hands over first), killing any that do not
exit within a grace period. Given the same ``--data-dir`` again it restarts the same cluster
(ports and token are kept in ``<parent>/cluster.json``). With ``--tls`` every link (peer, native,
gRPC, gateway) is TLS with client certificates required, from a throwaway CA made with
``openssl`` in ``<parent>/pki`` (kept for restarts; the plan remembers that it is a TLS cluster).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import random
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from kvapp.tls import ClientTls, TlsConfigError, make_local_pki

if TYPE_CHECKING:
    from kvapp.service import MemberInfo

logger = logging.getLogger(__name__)

__all__ = ["LocalMember", "free_ports", "plan_cluster", "run_local_cluster"]

_STOP_GRACE = 10.0


@attrs.frozen
class LocalMember:
    """One member of a local cluster."""

    name: str
    peer_port: int
    client_port: int
    grpc_port: int = 0
    http_port: int = 0
    tls: bool = False
    metrics_port: int = 0

    @property
    def peer_url(self) -> str:
        """Its peer URL."""
        return f"{self._scheme}://127.0.0.1:{self.peer_port}"

    @property
    def client_url(self) -> str:
        """Its client URL."""
        return f"{self._scheme}://127.0.0.1:{self.client_port}"

    @property
    def grpc_url(self) -> str:
        """Its etcd API (gRPC) URL."""
        return f"{self._scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """Its etcd JSON gateway URL."""
        return f"{self._scheme}://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Its ``/health`` and ``/metrics`` URL (plain HTTP, as etcd's metrics listener)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
_PORT_TRIES = 1_000
# Ports this process handed out lately: a caller may not have bound them yet, so two calls in
# a row (a cluster's client ports, then its gRPC ports) must not pick the same one.
_recent: collections.deque[int] = collections.deque(maxlen=4096)
_handed_out: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listens on now, for servers to bind.

    Chosen below the kernel's ephemeral range when there is room there (Linux's default is
    32768-60999): a port the kernel hands out for ``bind(port 0)`` comes from that range, from
    which it also takes the local port of every outgoing connection, so between this check and
    the server's bind a client connection could take it and the server would fail to start.
    Elsewhere (no such room, or no Linux range to read) the kernel picks, as for ``bind(0)``.
    """
    low = _ephemeral_low()
    if low is None or low - _LOWEST_PORT < 100 * n:
        return _kernel_ports(n)
    rng = random.Random()
    ports: list[int] = []
    for _ in range(_PORT_TRIES):
        if len(ports) == n:
            break
        port = rng.randrange(_LOWEST_PORT, low)
        if port not in ports and port not in _handed_out and _bindable(port):
            ports.append(port)
    if len(ports) < n:
        return _kernel_ports(n)
    for port in ports:
        if len(_recent) == _recent.maxlen:
            _handed_out.discard(_recent[0])
        _recent.append(port)
        _handed_out.add(port)
    return ports


def _ephemeral_low() -> int | None:
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return low


def _bindable(port: int) -> bool:
    """Whether a server can bind ``port`` now (with SO_REUSEADDR, as asyncio's servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def plan_cluster(
    size: int, parent: Path, *, base_port: int = 0, tls: bool = False
) -> tuple[str, list[LocalMember]]:
    """The cluster token and members: from ``<parent>/cluster.json`` if it exists, else new.

    ``tls`` applies to a new plan; an existing one keeps what it was made with.
    """
    plan = parent / "cluster.json"
    if plan.exists():
        data = json.loads(plan.read_text())
        members = [
            LocalMember(
                m["name"],
                m["peer_port"],
                m["client_port"],
                m.get("grpc_port", 0),
                m.get("http_port", 0),
                m.get("tls", False),
                m.get("metrics_port", 0),
            )
            for m in data["members"]
        ]
        if all(m.grpc_port and m.http_port and m.metrics_port for m in members):
            return str(data["token"]), members
        # A plan from before the etcd API, its gateway or metrics: give each member the ports
        # it lacks.
        extra = iter(free_ports(3 * len(members)))
        members = [
            attrs.evolve(
                m,
                grpc_port=m.grpc_port or next(extra),
                http_port=m.http_port or next(extra),
                metrics_port=m.metrics_port or next(extra),
            )
            for m in members
        ]
        token = str(data["token"])
    else:
        n = 5 * size
        ports = list(range(base_port, base_port + n)) if base_port else free_ports(n)
        members = []
        for i in range(size):
            peer, client, grpc_port, http_port, metrics = ports[5 * i : 5 * i + 5]
            members.append(
                LocalMember(f"m{i + 1}", peer, client, grpc_port, http_port, tls, metrics)
            )
        token = f"kvapp-local-{secrets.token_hex(4)}"
    parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(
        json.dumps({"token": token, "members": [attrs.asdict(m) for m in members]}, indent=2)
    )
    return token, members


def serve_args(
    m: LocalMember, members: Sequence[LocalMember], parent: Path, token: str
) -> list[str]:
    """The ``kvapp serve`` command line for ``m``."""
    initial = ",".join(f"{x.name}={x.peer_url}" for x in members)
    args = [
        sys.executable,
        "-m",
        "kvapp",
        "serve",
        "--name",
        m.name,
        "--data-dir",
        str(parent / m.name),
        "--listen-peer-urls",
        m.peer_url,
        "--listen-client-urls",
        m.client_url,
        "--listen-grpc-urls",
        m.grpc_url,
        "--listen-client-http-urls",
        m.http_url,
        "--listen-metrics-urls",
        m.metrics_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        token,
    ]
    if m.tls:  # etcd's eight flags, both sides, with the throwaway CA's files
        pki = parent / "pki"
        cert, key, ca = (str(pki / f) for f in (f"{m.name}.pem", f"{m.name}-key.pem", "ca.pem"))
        for side in ("", "peer-"):
            args += [f"--{side}cert-file", cert, f"--{side}key-file", key]
            args += [f"--{side}trusted-ca-file", ca, f"--{side}client-cert-auth"]
    return args


async def run_local_cluster(
    size: int,
    parent: Path,
    *,
    base_port: int = 0,
    fsync: bool = True,
    out: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
    tls: bool = False,
) -> int:
    """Run the cluster until ``stop`` is set (default: SIGINT/SIGTERM); returns exit status."""
    token, members = plan_cluster(size, parent, base_port=base_port, tls=tls)
    client_tls, tls_flags = None, ""
    if tls and not members[0].tls:
        out(f"kvapp cluster: error: {parent} holds a cluster made without --tls (use another dir)")
        return 2
    if members[0].tls:
        pki = parent / "pki"
        try:
            make_local_pki(pki, [*(m.name for m in members), "client"])
        except TlsConfigError as e:
            out(f"kvapp cluster: error: --tls: {e}")
            return 1
        client_tls = ClientTls(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
        tls_flags = f" --cacert {pki}/ca.pem --cert {pki}/client.pem --key {pki}/client-key.pem"
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    procs: dict[str, asyncio.subprocess.Process] = {}
    logs = []
    try:
        for m in members:
            args = serve_args(m, members, parent, token)
            if not fsync:
                args.append("--unsafe-no-fsync")
            log = (parent / f"{m.name}.log").open("ab")
            logs.append(log)
            procs[m.name] = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in members)
        grpc_endpoints = ",".join(
            m.grpc_url if m.tls else f"127.0.0.1:{m.grpc_port}" for m in members
        )
        out(f"kvapp cluster: {size} member(s), data in {parent}")
        for m in members:
            out(
                f"  {m.name}: client {m.client_url}  grpc {m.grpc_url}  http {m.http_url}  "
                f"metrics {m.metrics_url}  peer {m.peer_url}  log {parent / m.name}.log"
            )
        out("connect with:")
        out(f"  python3 -m kvapp.ctl --endpoints={endpoints}{tls_flags} put hello world")
        out(f"  python3 -m kvapp.ctl --endpoints={endpoints}{tls_flags} get hello")
        out(f"  ETCDCTL_API=3 etcdctl --endpoints={grpc_endpoints}{tls_flags} get hello")
        hello = base64.b64encode(b"hello").decode()
        out(
            f"  curl -s{tls_flags} -X POST {members[0].http_url}/v3/kv/range "
            f'-d \'{{"key": "{hello}"}}\''
        )
        out("Ctrl-C stops every member.")
        return await _monitor(members, procs, stop, out, client_tls)
    finally:
        await _stop_all(procs, out)
        for log in logs:
            log.close()


async def _monitor(
    members: Sequence[LocalMember],
    procs: dict[str, asyncio.subprocess.Process],
    stop: asyncio.Event,
    out: Callable[[str], None],
    tls: ClientTls | None = None,
) -> int:
    from kvapp.client import AsyncClient, ClientError  # noqa: PLC0415
    from kvapp.errors import EtcdError  # noqa: PLC0415

    last_view: tuple[str, int] | None = None
    table: dict[int, MemberInfo] | None = None
    exited: set[str] = set()
    ports = {m.name: m.client_port for m in members}
    client = AsyncClient(
        [f"127.0.0.1:{p}" for p in ports.values()],
        connect_timeout=0.5,
        request_timeout=0.5,
        tls=tls,
    )
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            for name, p in procs.items():
                if p.returncode is not None and name not in exited:
                    exited.add(name)
                    out(f"member {name} exited with status {p.returncode}")
            if len(exited) == len(procs):
                out("every member has exited")
                return 1
            by_id: dict[int, str] = {}
            leader = term = 0
            for name, port in ports.items():
                if name in exited:
                    continue
                try:
                    st = await client.status(f"127.0.0.1:{port}")
                except (ClientError, EtcdError, OSError, TimeoutError) as e:
                    logger.debug("status of %s: %s", name, e)  # starting or down: try later
                    continue
                by_id[st.header.member_id] = name
                if st.raft_term >= term:
                    term, leader = st.raft_term, st.leader
            if leader and leader in by_id and (by_id[leader], term) != last_view:
                last_view = (by_id[leader], term)
                out(f"leader is {last_view[0]} (term {term})")
            if by_id:
                try:
                    now = {m.id: m for m in await client.member_list()}
                except (ClientError, EtcdError, OSError, TimeoutError) as e:
                    logger.debug("member list: %s", e)
                    continue
                if table is not None:
                    for line in membership_changes(table, now):
                        out(line)
                table = now
    finally:
        await client.close()
    return 0


def membership_changes(
    before: Mapping[int, MemberInfo], after: Mapping[int, MemberInfo]
) -> list[str]:
    """What ``kvapp cluster`` prints when the member table goes from ``before`` to ``after``."""

    def who(m: MemberInfo) -> str:
        return f"{m.name} ({m.id:x})" if m.name else f"{m.id:x} at {', '.join(m.peer_urls)}"

    lines = []
    for mid, m in after.items():
        old = before.get(mid)
        if old is None:
            lines.append(f"member {who(m)} added" + (" as a learner" if m.is_learner else ""))
        elif old.is_learner and not m.is_learner:
            lines.append(f"member {who(m)} promoted to voter")
        elif m.name and not old.name:
            lines.append(f"member {who(m)} started")
    lines += [f"member {who(m)} removed" for mid, m in before.items() if mid not in after]
    return lines


async def _stop_all(
    procs: dict[str, asyncio.subprocess.Process], out: Callable[[str], None]
) -> None:
    for p in procs.values():
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await p.wait()
        except TimeoutError:
            out(f"member {name} did not stop within {_STOP_GRACE}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
    if procs:
        out("all members stopped")
