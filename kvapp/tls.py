"""TLS for kvapp's listeners and dialers: contexts from etcd's flags, and logged refusals.

**Configuration.** :class:`TlsInfo` holds one side's files as etcd's flags name them (etcd's
``transport.TLSInfo``): ``--cert-file --key-file --trusted-ca-file --client-cert-auth`` for the
client-facing listeners, ``--peer-cert-file --peer-key-file --peer-trusted-ca-file
--peer-client-cert-auth`` for the peer links. :meth:`TlsInfo.server_context` is the listening
side: it presents the certificate and, with ``client_cert_auth``, requires a client certificate
signed by the trusted CA. :meth:`TlsInfo.client_context` is the dialing side of a peer link: it
verifies the listener's certificate against the trusted CA (the system's roots without one) and
the host name or IP address it dialed, and presents its own certificate when the listener asks
for one (when the listener runs with ``--peer-client-cert-auth``), so a member's peer
certificate must allow both server and client authentication, as etcd's must.
:func:`client_context` is the same for clients (``kvctl --cacert --cert --key``). Every
loading error is a :class:`TlsConfigError` naming the file and what is wrong with it, raised
before anything is served.

**Refusals.** asyncio's ``create_server(ssl=...)`` drops a connection whose TLS handshake fails
without a word (outside its debug mode). :class:`TlsAcceptor` accepts plain TCP instead, runs the
server side of the handshake itself (``loop.start_tls``) and only then hands the TLS transport to
the listener's protocol, so a failed handshake is logged at WARNING with the remote address and
the reason (:func:`describe_tls_error`: a certificate that does not verify, no certificate
presented, a plaintext client, a timeout...) and the listener carries on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import attrs

__all__ = [
    "ClientTls",
    "TlsAcceptor",
    "TlsConfigError",
    "TlsInfo",
    "add_serve_flags",
    "client_context",
    "describe_tls_error",
    "is_tls_record",
    "make_local_pki",
    "start_tls_server",
    "tls_from_flags",
]

logger = logging.getLogger(__name__)

_MIN_VERSION = ssl.TLSVersion.TLSv1_2  # etcd's default minimum


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable or unusable.

    Attributes:
        field: which :class:`TlsInfo` field is at fault (``cert_file``, ``key_file`` or
            ``trusted_ca_file``), so a command line can name its flag.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _no_password() -> bytes:
    raise TlsConfigError(
        "key_file", "the private key is encrypted; kvapp (like etcd) takes an unencrypted key"
    )


def _read(path: Path, field: str, what: str, marker: bytes) -> None:
    """Check that ``path`` is a readable file holding a PEM ``marker``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TlsConfigError(field, f"{path}: cannot read it: {e.strerror or e}") from None
    if marker not in data:
        raise TlsConfigError(field, f"{path}: not a PEM {what}")


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _read(cert, "cert_file", "certificate", b"-----BEGIN CERTIFICATE-----")
    _read(key, "key_file", "private key", b"PRIVATE KEY-----")
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(
                "key_file", f"{key}: this key does not belong to the certificate in {cert}"
            ) from None
        raise TlsConfigError(
            "cert_file", f"{cert} with the key {key}: unusable: {_ssl_text(e)}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    _read(ca, "trusted_ca_file", "certificate", b"-----BEGIN CERTIFICATE-----")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise TlsConfigError("trusted_ca_file", f"{ca}: unusable: {_ssl_text(e)}") from None


@attrs.frozen
class TlsInfo:
    """One side's TLS files and client authentication (etcd's ``transport.TLSInfo``).

    Attributes:
        cert_file: this member's certificate (PEM; a chain may follow it).
        key_file: its unencrypted private key (PEM).
        trusted_ca_file: the CA certificates (PEM) that sign the other side's certificates:
            clients' (or peers') when ``client_cert_auth`` is on; for a dialing peer, the
            listeners'. None: the system's roots, and client certificates cannot be required.
        client_cert_auth: require a certificate signed by ``trusted_ca_file`` from whoever
            connects.
    """

    cert_file: Path = attrs.field(converter=Path)
    key_file: Path = attrs.field(converter=Path)
    trusted_ca_file: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path)
    )
    client_cert_auth: bool = False

    def server_context(self) -> ssl.SSLContext:
        """The listening side's context.

        Raises:
            TlsConfigError: a file is missing, unreadable or unusable, or ``client_cert_auth``
                is on without ``trusted_ca_file``.
        """
        if self.client_cert_auth and self.trusted_ca_file is None:
            raise TlsConfigError(
                "trusted_ca_file", "client certificate authentication needs a trusted CA file"
            )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _MIN_VERSION
        _load_chain(ctx, self.cert_file, self.key_file)
        if self.trusted_ca_file is not None:
            _load_ca(ctx, self.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.client_cert_auth else ssl.CERT_NONE
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The dialing side's context (a member dialing a peer, or its leader's gRPC API).

        It verifies the listener against ``trusted_ca_file`` (the system's roots without it)
        and the host it dialed, and presents this side's certificate when asked.

        Raises:
            TlsConfigError: a file is missing, unreadable or unusable.
        """
        return client_context(
            ca_file=self.trusted_ca_file, cert_file=self.cert_file, key_file=self.key_file
        )

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """The certificate, key and trusted CA as PEM bytes (for grpcio), checked first.

        Raises:
            TlsConfigError: as :meth:`server_context`.
        """
        self.server_context()
        ca = self.trusted_ca_file.read_bytes() if self.trusted_ca_file is not None else None
        return self.cert_file.read_bytes(), self.key_file.read_bytes(), ca


def client_context(
    *,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> ssl.SSLContext:
    """A context for dialing a TLS listener (etcdctl's ``--cacert --cert --key``).

    The listener's certificate must be signed by ``ca_file`` (the system's roots without it)
    and name the host or IP address dialed. ``cert_file`` and ``key_file`` (both or neither) are
    presented when the listener asks for a client certificate.

    Raises:
        TlsConfigError: a file is missing, unreadable or unusable, or only one of
            ``cert_file`` and ``key_file`` is given.
    """
    if (cert_file is None) != (key_file is None):
        field = "key_file" if key_file is None else "cert_file"
        raise TlsConfigError(field, "a client certificate needs both its file and its key's")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.minimum_version = _MIN_VERSION
    if ca_file is not None:
        _load_ca(ctx, Path(ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None and key_file is not None:
        _load_chain(ctx, Path(cert_file), Path(key_file))
    return ctx


@attrs.frozen
class ClientTls:
    """A client's TLS settings (etcdctl's ``--cacert --cert --key``), for either protocol.

    Attributes:
        ca_file: CA certificates (PEM) the members' certificates must be signed by; None:
            the system's roots.
        cert_file: the client's certificate (PEM), presented when a member requires one
            (``--client-cert-auth``); give ``key_file`` with it.
        key_file: its unencrypted private key (PEM).
    """

    ca_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    cert_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    key_file: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    def context(self) -> ssl.SSLContext:
        """An ``ssl`` context for the native protocol (:func:`client_context`).

        Raises:
            TlsConfigError: a file is missing, unreadable or unusable.
        """
        return client_context(
            ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )

    def pem(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The CA, key and certificate as PEM bytes (for grpcio's channel credentials).

        Raises:
            TlsConfigError: as :meth:`context`, which checks them first.
        """
        self.context()
        ca = self.ca_file.read_bytes() if self.ca_file is not None else None
        key = self.key_file.read_bytes() if self.key_file is not None else None
        cert = self.cert_file.read_bytes() if self.cert_file is not None else None
        return ca, key, cert


_LEAF_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "authorityKeyIdentifier=keyid\n"
)


def make_local_pki(directory: Path, names: Sequence[str], *, days: int = 365) -> None:
    """A throwaway CA and certificates for a cluster on 127.0.0.1, made with ``openssl``.

    In ``directory``: ``ca.pem`` (and ``ca-key.pem``), and ``<name>.pem`` with
    ``<name>-key.pem`` for each name, valid for ``127.0.0.1`` and ``localhost`` and for server
    and client use (a member's certificate serves both its listeners and its peer dials). Files
    already there are kept, so a restarted cluster keeps its certificates. For local clusters
    and tests only: the CA's key lies beside the certificates.

    Raises:
        TlsConfigError: the ``openssl`` command is missing or failed (the message says which).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsConfigError("cert_file", "making a throwaway CA needs the openssl command")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def run(*args: str) -> None:
        done = subprocess.run(  # noqa: S603 - a fixed openssl command line on our own files
            [openssl, *args], cwd=directory, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise TlsConfigError("cert_file", f"openssl {args[0]} failed: {done.stderr.strip()}")

    if not (directory / "ca.pem").exists():
        run("req", "-x509", *ec, "-days", str(days), "-subj", "/CN=kvapp local CA",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    (directory / "leaf.ext").write_text(_LEAF_EXTENSIONS)
    for name in names:
        if (directory / f"{name}.pem").exists():
            continue
        run("req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
            "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", str(days), "-extfile", "leaf.ext",
            "-out", f"{name}.pem")  # fmt: skip
        (directory / f"{name}.csr").unlink()


# -- etcd's flags -------------------------------------------------------------------------------


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Add etcd's eight TLS flags (client-facing and peer) to ``kvapp serve``'s parser."""
    g = parser.add_argument_group(
        "TLS", "etcd's flags; with them every client (or peer) URL must be https://"
    )
    for prefix, whom in (("", "client-facing listeners"), ("peer-", "peer links")):
        g.add_argument(f"--{prefix}cert-file", help=f"certificate (PEM) of the {whom}")
        g.add_argument(f"--{prefix}key-file", help="its unencrypted private key (PEM)")
        g.add_argument(
            f"--{prefix}trusted-ca-file",
            help="CA certificates (PEM) that sign "
            + ("the peers' certificates (checked both ways)" if prefix else "client certificates"),
        )
        g.add_argument(
            f"--{prefix}client-cert-auth",
            action="store_true",
            help=f"require a certificate signed by --{prefix}trusted-ca-file from every "
            f"{'peer' if prefix else 'client'}",
        )


def tls_from_flags(
    args: argparse.Namespace, *, peer: bool, urls: Mapping[str, Sequence[str]]
) -> TlsInfo | None:
    """One side's :class:`TlsInfo` from etcd's flags, checked against that side's URLs.

    TLS is on exactly when the certificate and key are given, and then every URL of the side
    must be ``https://`` (and without them ``http://``), as etcd requires. The files are
    loaded (and the key matched to the certificate) here, before anything touches the disk.

    Args:
        args: the parsed flags (:func:`add_serve_flags`).
        peer: the peer side (``--peer-*``) rather than the client-facing one.
        urls: the side's URLs by the flag that gave them (``--listen-peer-urls`` and
            ``--initial-cluster`` for the peer side).

    Raises:
        TlsConfigError: the flags do not fit together or with the URLs, or a file is missing,
            unreadable or unusable; the message names the flag.
    """
    prefix = "peer-" if peer else ""
    flag = {
        f: f"--{prefix}{f.replace('_', '-')}"
        for f in ("cert_file", "key_file", "trusted_ca_file", "client_cert_auth")
    }
    attr = "peer_" if peer else ""
    cert = getattr(args, f"{attr}cert_file", None)
    key = getattr(args, f"{attr}key_file", None)
    ca = getattr(args, f"{attr}trusted_ca_file", None)
    auth = bool(getattr(args, f"{attr}client_cert_auth", False))
    schemes = [(f, u, urlsplit(u).scheme) for f, us in urls.items() for u in us]
    if not cert and not key:
        if ca or auth:
            given = flag["trusted_ca_file"] if ca else flag["client_cert_auth"]
            raise TlsConfigError(
                "cert_file", f"{given} needs {flag['cert_file']} and {flag['key_file']}"
            )
        for f, u, scheme in schemes:
            if scheme == "https":
                raise TlsConfigError(
                    "cert_file",
                    f"{f}: {u} is https:// but no TLS certificate is given: add "
                    f"{flag['cert_file']} and {flag['key_file']} (or use http://)",
                )
        return None
    if not cert or not key:
        missing, given = ("cert_file", "key_file") if not cert else ("key_file", "cert_file")
        raise TlsConfigError(missing, f"{flag[given]} needs {flag[missing]} too")
    for f, u, scheme in schemes:
        if scheme != "https":
            raise TlsConfigError(
                "cert_file",
                f"{f}: {u} is {scheme}:// but {flag['cert_file']} turns TLS on for "
                f"{'peer links' if peer else 'clients'}: use https://",
            )
    if auth and not ca:
        raise TlsConfigError(
            "trusted_ca_file",
            f"{flag['client_cert_auth']} needs {flag['trusted_ca_file']} (the CA that signs "
            f"the {'peers' if peer else 'clients'}' certificates)",
        )
    info = TlsInfo(Path(cert), Path(key), Path(ca) if ca else None, auth)
    try:
        info.server_context()
        if peer:
            info.client_context()
    except TlsConfigError as e:
        raise TlsConfigError(e.field, f"{flag[e.field]}: {e}") from None
    return info


# -- describing failures ----------------------------------------------------------------------

_SSL_SUFFIX = re.compile(r"\s*\(_ssl\.c:\d+\)$")

_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no certificate presented (a client certificate is "
    "required here)",
    "WRONG_VERSION_NUMBER": "the other side does not speak TLS (plaintext? TLS needs https:// URLs "
    "and certificates on both sides)",
    "HTTP_REQUEST": "not a TLS handshake (plain HTTP)",
    "UNSUPPORTED_PROTOCOL": "the other side speaks an unsupported TLS version",
    "NO_SHARED_CIPHER": "no cipher in common",
    "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the other side refused our certificate (expired)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the other side requires a client certificate and we "
    "presented none",
}


def _ssl_text(exc: ssl.SSLError) -> str:
    """OpenSSL's message without the ``[SSL: X]`` tag and the source location."""
    text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
    text = _SSL_SUFFIX.sub("", text)
    return re.sub(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\]\s*", "", text) or str(exc)


def describe_tls_error(exc: BaseException) -> str:
    """Why a TLS handshake failed, in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or _ssl_text(exc)}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        return _REASONS.get(reason, f"TLS error: {_ssl_text(exc)}")
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    ):
        return "TLS handshake not completed in time"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):
        return (
            "the other side closed the connection during the TLS handshake (does it trust our "
            "certificate?)"
        )
    return str(exc) or type(exc).__name__


def is_tls_record(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` starts like a TLS record (a handshake or an alert, TLS 1.x)."""
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


# -- the listening side -------------------------------------------------------------------------


def _remote(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class _Relay(asyncio.Protocol):
    """Holds what arrives between the end of the handshake and the hand-over to the protocol.

    ``loop.start_tls`` feeds application data that came with the handshake's last flight to
    its protocol before the awaiting coroutine resumes; this keeps it for the real protocol.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool | None:
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def hand_over(self, transport: asyncio.Transport, protocol: asyncio.BaseProtocol) -> None:
        """Make ``protocol`` the transport's protocol and give it the data held so far."""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed(protocol, self.data)
        self.data.clear()


def _feed(protocol: asyncio.BaseProtocol, chunks: list[bytes]) -> None:
    """Give ``chunks`` to ``protocol`` as its transport would (buffered or not).

    Duck-typed: uvloop's TLS protocol has ``get_buffer`` without subclassing asyncio's.
    """
    get_buffer = getattr(protocol, "get_buffer", None)
    for data in chunks:
        if get_buffer is not None:
            view = memoryview(data)
            while view:
                buf = memoryview(get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)  # type: ignore[attr-defined]
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]


class _Handshake(asyncio.Protocol):
    """A TCP connection whose server-side TLS handshake is in progress."""

    def __init__(self, acceptor: TlsAcceptor) -> None:
        self._acceptor = acceptor
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast("asyncio.Transport", transport)  # uvloop's do not subclass it
        # Every byte must reach TLS: hold reading until start_tls takes the transport over.
        transport.pause_reading()
        self.transport = transport
        acc = self._acceptor
        if acc.closed:
            transport.abort()
            return
        acc._pending.add(self)
        self.task = asyncio.get_running_loop().create_task(
            self._run(transport), name=f"TLS handshake ({acc.what})"
        )

    async def _run(self, transport: asyncio.Transport) -> None:
        acc = self._acceptor
        remote = _remote(transport)
        relay = _Relay()
        loop = asyncio.get_running_loop()
        if self.early:
            # Queued before start_tls's own callbacks, so this runs once TLS has the transport
            # and before the handshake reads: the early bytes (the ClientHello) come first.
            early, self.early = self.early, []
            loop.call_soon(lambda: _feed(transport.get_protocol(), early))
        try:
            tls = await loop.start_tls(
                transport,
                relay,
                acc.context,
                server_side=True,
                ssl_handshake_timeout=acc.handshake_timeout,
            )
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError, timeouts too
            transport.abort()
            acc.refused += 1
            acc.log.warning(
                "%s: refused a connection from %s: %s", acc.what, remote, describe_tls_error(exc)
            )
            return
        finally:
            acc._pending.discard(self)
        if relay.closed or acc.closed or tls is None:
            if tls is not None:
                tls.abort()
            acc.log.debug("%s: %s closed right after the TLS handshake", acc.what, remote)
            return
        relay.hand_over(tls, acc.factory())

    def data_received(self, data: bytes) -> None:
        """Keep bytes that came before TLS took the transport over, for the handshake.

        asyncio's loop honours the pause in :meth:`connection_made`, so nothing arrives here.
        uvloop starts reading after ``connection_made`` returns whatever it asked, so the
        client's first flight can land here; :meth:`_run` gives it to TLS first.
        """
        self.early.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None:
            self.task.cancel()


class TlsAcceptor:
    """A protocol factory for ``loop.create_server`` (plain TCP) that adds server-side TLS.

    Each accepted connection runs its TLS handshake first; once it succeeds, a protocol from
    ``factory`` gets the TLS transport (with the peer's certificate in its
    ``get_extra_info("peercert")``), as with ``create_server(ssl=context)``. A failed handshake
    is logged at WARNING as ``"<what>: refused a connection from <host:port>: <reason>"`` and
    the connection closed; nothing else notices.

    Args:
        context: the server context (:meth:`TlsInfo.server_context`).
        factory: makes the protocol of an established connection.
        what: names the listener in log lines (``"member 1: peer links"``).
        handshake_timeout: seconds a handshake may take.
        log: the logger refusals go to.

    Attributes:
        refused: handshakes failed so far.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        what: str,
        handshake_timeout: float = 10.0,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
    ) -> None:
        self.context = context
        self.factory = factory
        self.what = what
        self.handshake_timeout = handshake_timeout
        self.log = log
        self.refused = 0
        self.closed = False
        self._pending: set[_Handshake] = set()

    def __call__(self) -> asyncio.Protocol:
        """A protocol for one accepted TCP connection."""
        return _Handshake(self)

    async def close(self) -> None:
        """Abort the handshakes in progress; later connections are closed at once."""
        self.closed = True
        pending = list(self._pending)
        self._pending.clear()
        for h in pending:
            h.abort()
        tasks = [h.task for h in pending if h.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def start_tls_server(
    client_connected_cb: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
    ],
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    what: str,
    handshake_timeout: float = 10.0,
    limit: int = 2**16,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
) -> tuple[asyncio.Server, TlsAcceptor]:
    """``asyncio.start_server`` over TLS, with refused handshakes logged (:class:`TlsAcceptor`).

    Close the returned acceptor (``await acceptor.close()``) beside the server when stopping.
    """

    def streams() -> asyncio.StreamReaderProtocol:  # what start_server makes
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=limit), client_connected_cb)

    acceptor = TlsAcceptor(
        context, streams, what=what, handshake_timeout=handshake_timeout, log=log
    )
    server = await asyncio.get_running_loop().create_server(acceptor, host, port)
    return server, acceptor
