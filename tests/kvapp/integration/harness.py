"""Real ``kvapp serve`` member processes on 127.0.0.1, started, killed and restarted by tests.

:class:`ProcCluster` plans members (ports from binding port 0, data directories and logs under
a test's ``tmp_path``), starts each as ``python -m kvapp serve`` with etcd's flags, finds the
leader through the client's ``status``, kills (SIGKILL), stops (SIGTERM) and restarts members,
and makes clients for them. Every wait is bounded and fails with a message naming what did not
happen; :meth:`ProcCluster.close` kills whatever is still running. Each member's stdout and
stderr go to ``<tmp_path>/<name>.log`` (appended across restarts, with a marker line per
start), which the package's conftest attaches to a failing test's report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cbor2

from kvapp.client import Client, ClientError, OutcomeUnknown
from kvapp.errors import EtcdError
from kvapp.launcher import free_ports
from kvapp.node import cluster_id_for, member_id_for
from kvapp.service import StatusInfo

__all__ = [
    "REPO_ROOT",
    "AnswerCatcher",
    "ProcCluster",
    "ProcMember",
    "Writer",
    "free_ports",
    "keys_present",
    "poll",
    "run_serve",
]

REPO_ROOT = Path(__file__).resolve().parents[3]

_T = TypeVar("_T")

STOP_GRACE = 15.0
"""Seconds a SIGTERMed member may take to exit before the harness kills it."""


def poll(
    check: Callable[[], _T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str,
    describe: Callable[[], str] | None = None,
) -> _T:
    """Call ``check`` until it returns something other than None; fail after ``timeout`` s.

    Raises:
        AssertionError: ``check`` did not succeed in time; the message says ``what`` was
            awaited and, if given, ``describe()`` of the last state.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_serve(args: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kvapp serve ARGS`` to completion (for members expected to refuse)."""
    return subprocess.run(
        [sys.executable, "-m", "kvapp", "serve", *args],
        cwd=REPO_ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@attrs.define(eq=False)
class ProcMember:
    """One planned member: its ports, data directory, log and (while running) its process."""

    name: str
    peer_port: int
    client_port: int
    data_dir: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def peer_url(self) -> str:
        """Its peer URL."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """Its client endpoint, ``127.0.0.1:port``."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        """Whether its process was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything it logged so far (across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ProcCluster:
    """A cluster of ``kvapp serve`` processes on 127.0.0.1 (see the module docstring).

    Args:
        root: where data directories and logs go (a test's ``tmp_path``).
        size: members planned and listed in ``--initial-cluster`` (started by :meth:`start`).
        fsync: run with fsync (False passes ``--unsafe-no-fsync``).
        heartbeat_ms: ``--heartbeat-interval``.
        election_ms: ``--election-timeout``.
        snapshot_count: ``--snapshot-count`` (None: the default).
        token: ``--initial-cluster-token``.
        extra_args: more flags for every member.
    """

    def __init__(
        self,
        root: Path,
        size: int,
        *,
        fsync: bool = False,
        heartbeat_ms: int = 100,
        election_ms: int = 1000,
        snapshot_count: int | None = None,
        token: str = "kvapp-it",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.snapshot_count = snapshot_count
        self.token = token
        self.cluster_id = cluster_id_for(token)
        self.extra_args = tuple(extra_args)
        self.members: dict[str, ProcMember] = {}
        self.initial: list[str] = []
        self._clients: list[Client] = []
        self._probe: Client | None = None
        for i in range(size):
            m = self.plan(f"m{i + 1}")
            self.initial.append(m.name)

    # -- planning and processes --

    def plan(self, name: str) -> ProcMember:
        """Plan a member (fresh ports, data directory and log); it is not started."""
        peer, client = free_ports(2)
        m = ProcMember(name, peer, client, self.root / name, self.root / f"{name}.log")
        self.members[name] = m
        return m

    def __getitem__(self, name: str) -> ProcMember:
        return self.members[name]

    def member_id(self, name: str) -> int:
        """The id ``kvapp serve`` computes for a member."""
        return member_id_for([self.members[name].peer_url], self.cluster_id)

    def name_of(self, member_id: int) -> str:
        """The planned member with this id."""
        for name in self.members:
            if self.member_id(name) == member_id:
                return name
        raise AssertionError(f"no planned member has id {member_id:x}")

    def initial_cluster(self, names: Sequence[str] | None = None) -> str:
        """An ``--initial-cluster`` value naming ``names`` (default: the initial members)."""
        return ",".join(f"{n}={self.members[n].peer_url}" for n in (names or self.initial))

    def serve_args(self, m: ProcMember, *, initial: Sequence[str] | None, state: str) -> list[str]:
        """The ``kvapp serve`` flags for ``m``."""
        args = [
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-peer-urls",
            m.peer_url,
            "--listen-client-urls",
            f"http://{m.endpoint}",
            "--initial-cluster",
            self.initial_cluster(initial),
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            self.token,
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
        ]
        if self.snapshot_count is not None:
            args += ["--snapshot-count", str(self.snapshot_count)]
        if not self.fsync:
            args.append("--unsafe-no-fsync")
        return [*args, *self.extra_args, *m.extra_args]

    def start(
        self,
        *names: str,
        initial: Sequence[str] | None = None,
        state: str = "new",
        wait: bool = True,
    ) -> None:
        """Start members (default: every planned member that is not running).

        With ``wait``, returns once each answers ``status`` on its client port.
        """
        todo = [self.members[n] for n in names] if names else list(self.members.values())
        for m in todo:
            if m.running:
                if names:
                    raise AssertionError(f"{m.name} is already running")
                continue
            m.starts += 1
            with m.log_path.open("ab") as log:
                log.write(f"=== harness: start #{m.starts} of {m.name} ===\n".encode())
                log.flush()
                m.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kvapp",
                        "serve",
                        *self.serve_args(m, initial=initial, state=state),
                    ],
                    cwd=REPO_ROOT,
                    env=_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        if wait:
            for m in todo:
                self.wait_serving(m.name)

    def wait_serving(self, name: str, *, timeout: float = 20.0) -> StatusInfo:
        """Wait until ``name`` answers ``status`` on its client port."""
        m = self.members[name]

        def check() -> StatusInfo | None:
            self._check_alive(m)
            try:
                return self.probe().status(m.endpoint)
            except (ClientError, EtcdError, OSError):
                return None

        return poll(check, timeout=timeout, what=f"{name} to serve clients on {m.endpoint}")

    def _check_alive(self, m: ProcMember) -> None:
        if m.proc is None:
            raise AssertionError(f"{m.name} was never started")
        code = m.proc.poll()
        if code is not None:
            raise AssertionError(f"{m.name} exited with status {code}; log tail:\n{_tail(m)}")

    def kill(self, name: str) -> None:
        """SIGKILL a member and reap it."""
        m = self.members[name]
        assert m.proc is not None, f"{name} was never started"
        with contextlib.suppress(ProcessLookupError):
            m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=10)

    def terminate(self, name: str, *, timeout: float = STOP_GRACE) -> int:
        """SIGTERM a member and wait for it to exit; returns its exit status.

        Raises:
            AssertionError: it did not exit within ``timeout`` (it is then killed).
        """
        m = self.members[name]
        assert m.proc is not None, f"{name} was never started"
        with contextlib.suppress(ProcessLookupError):
            m.proc.send_signal(signal.SIGTERM)
        try:
            return m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(timeout=10)
            raise AssertionError(f"{name} did not exit within {timeout}s of SIGTERM") from None

    def wait_exit(self, name: str, *, timeout: float) -> int:
        """Wait for a member to exit on its own; returns its exit status."""
        m = self.members[name]
        assert m.proc is not None, f"{name} was never started"
        try:
            return m.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout}s") from None

    def running(self) -> list[str]:
        """Names of the members whose processes are running."""
        return [n for n, m in self.members.items() if m.running]

    # -- clients --

    def probe(self) -> Client:
        """The harness's own client (short timeouts, no retries) for status polling."""
        if self._probe is None:
            self._probe = Client(
                [m.endpoint for m in self.members.values()],
                connect_timeout=1.0,
                request_timeout=2.0,
                max_attempts=1,
            )
        return self._probe

    def client(self, *names: str, **options: Any) -> Client:
        """A client of ``names`` (default: every planned member), closed by :meth:`close`."""
        members = [self.members[n] for n in names] if names else list(self.members.values())
        options.setdefault("connect_timeout", 1.0)
        options.setdefault("request_timeout", 3.0)
        options.setdefault("max_attempts", 8)
        c = Client([m.endpoint for m in members], **options)
        self._clients.append(c)
        return c

    def status(self, name: str) -> StatusInfo:
        """``name``'s status (no retry)."""
        return self.probe().status(self.members[name].endpoint)

    def wait_leader(self, *, among: Sequence[str] | None = None, timeout: float = 30.0) -> str:
        """Wait until every running member (or ``among``) names the same, running leader.

        Returns:
            The leader's name.
        """
        names = list(among) if among is not None else None
        last: dict[str, str] = {}

        def check() -> str | None:
            who = names if names is not None else self.running()
            leaders = set()
            last.clear()
            for n in who:
                self._check_alive(self.members[n])
                try:
                    st = self.status(n)
                except (ClientError, EtcdError, OSError) as e:
                    last[n] = f"no status: {e}"
                    return None
                last[n] = f"leader {st.leader:x} term {st.raft_term}"
                leaders.add(st.leader)
            if len(leaders) != 1 or 0 in leaders:
                return None
            leader = self.name_of(leaders.pop())
            return leader if leader in who else None

        return poll(
            check,
            timeout=timeout,
            interval=0.1,
            what="one leader named by every member",
            describe=lambda: repr(last),
        )

    def followers(self, leader: str) -> list[str]:
        """Running members other than ``leader``."""
        return [n for n in self.running() if n != leader]

    # -- cleanup and diagnostics --

    def close(self) -> None:
        """Close every client and kill every member still running."""
        for c in [*self._clients, *([self._probe] if self._probe else [])]:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._probe = None
        for m in self.members.values():
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(timeout=10)

    def logs(self, *, tail: int = 150) -> str:
        """The last ``tail`` lines of every member's log."""
        return "\n".join(
            f"----- {m.name} ({m.log_path}) -----\n{_tail(m, tail)}" for m in self.members.values()
        )


def _tail(m: ProcMember, lines: int = 40) -> str:
    return "\n".join(m.log_text().splitlines()[-lines:])


class Writer:
    """A background thread writing ``<prefix><n>`` keys and recording which were acknowledged.

    Acknowledged writes are the ones ``put`` returned for; ``OutcomeUnknown``, unavailability and
    etcd errors are counted as failures (the write may or may not have happened) and writing
    goes on. Use it as a context manager; leaving it stops the thread.

    Args:
        client: the client to write through.
        prefix: the keys' prefix.
        pause: seconds between writes.
    """

    def __init__(self, client: Client, prefix: bytes, *, pause: float = 0.005) -> None:
        self._client = client
        self.prefix = prefix
        self._pause = pause
        self.acked: list[bytes] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvapp-it-writer", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop writing and join the thread."""
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise AssertionError("the writer thread did not stop within 60 s")

    def wait_acked(self, n: int, *, timeout: float) -> None:
        """Wait until at least ``n`` more writes than now were acknowledged."""
        target = len(self.acked) + n
        poll(
            lambda: True if len(self.acked) >= target or self.error else None,
            timeout=timeout,
            what=f"{n} more acknowledged writes (have {len(self.acked)}; "
            f"failures {self.failures[-3:]})",
        )
        if self.error is not None:
            raise AssertionError(f"the writer crashed: {self.error!r}")

    def _run(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                key = self.prefix + b"%06d" % i
                i += 1
                try:
                    self._client.put(key, b"v")
                except (OutcomeUnknown, ClientError, EtcdError) as e:
                    self.failures.append(f"{key!r}: {type(e).__name__}: {e}")
                else:
                    self.acked.append(key)
                if self._pause:
                    self._stop.wait(self._pause)
        except BaseException as e:  # noqa: BLE001 - reported by wait_acked and the test
            self.error = e


class AnswerCatcher:
    """A TCP proxy to one member's client port that can catch the member's next answer.

    It relays bytes both ways. After :meth:`arm`, the first frame from the member that answers
    a request of the armed operation (the client's frames say which request numbers those are)
    is kept, not relayed: :attr:`kept` holds it, :attr:`caught` is set, and nothing more goes
    to the client. Closing the upstream (e.g. the member was killed) closes the client's
    connection. Only 127.0.0.1; one thread per direction.

    Args:
        target: the member's client port.
    """

    def __init__(self, target: int) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._armed: str | None = None
        self._watched: set[int] = set()
        self.caught = threading.Event()
        self.kept: bytes = b""
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    @property
    def endpoint(self) -> str:
        """The proxy's endpoint, for a client."""
        return f"127.0.0.1:{self.port}"

    def arm(self, op: str) -> None:
        """Keep the member's next answer to an ``op`` request instead of relaying it."""
        self._armed = op

    def close(self) -> None:
        """Close every socket and join the threads."""
        self._closed = True
        for sock in [self._listener, *self._socks]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in self._threads:
            t.join(timeout=10)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="kvapp-it-proxy")
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            up.settimeout(None)
            self._socks += [down, up]
            self._spawn(self._requests, down, up)
            self._spawn(self._answers, up, down)

    def _requests(self, down: socket.socket, up: socket.socket) -> None:
        with contextlib.suppress(OSError):
            for n, frame in enumerate(_frames(down)):
                if n > 0 and self._armed is not None:  # the first is the handshake
                    for req_no, op, _body in cbor2.loads(frame[4:]):
                        if op == self._armed:
                            self._watched.add(req_no)
                up.sendall(frame)
        with contextlib.suppress(OSError):
            up.shutdown(socket.SHUT_WR)

    def _answers(self, up: socket.socket, down: socket.socket) -> None:
        with contextlib.suppress(OSError):
            for n, frame in enumerate(_frames(up)):
                if self.caught.is_set():
                    continue
                if n > 0 and any(item[1] in self._watched for item in cbor2.loads(frame[4:])):
                    self.kept = frame
                    self.caught.set()
                    continue
                down.sendall(frame)
        with contextlib.suppress(OSError):
            down.shutdown(socket.SHUT_RDWR)


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """The native protocol's frames as ``sock`` receives them, each with its length prefix."""
    buf = b""
    while data := sock.recv(65536):
        buf += data
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = 4 + int.from_bytes(buf[:4], "big")
            yield buf[:size]
            buf = buf[size:]


def keys_present(client: Client, prefix: bytes) -> set[bytes]:
    """Every key under ``prefix`` (one linearizable range read)."""
    return {kv.key for kv in client.get(prefix, prefix=True, keys_only=True).kvs}
