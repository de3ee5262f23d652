"""kvctl's command line: the argparse tree, value parsers, and etcdctl's txn input syntax.

Everything here is pure (no I/O besides argparse's own messages), so it is checked before a
connection is made: a bad argument gets a clear message and exit status 2.

Global flags (``--endpoints``, ``--dial-timeout``, ``--command-timeout``, ``-w``, ``--hex``,
and TLS's ``--cacert --cert --key``) may appear before or after the command, as with etcdctl;
unset ones fall back to the ``ETCDCTL_*`` environment variables etcdctl reads, then to
etcdctl's defaults.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NoReturn

import attrs

from kvapp.client import key_range
from kvapp.client import txn as txnops
from kvapp.client.native import parse_endpoint
from kvapp.mvcc.keyrange import ALL_KEYS_END
from kvapp.mvcc.types import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SortOrder,
    SortTarget,
)
from kvapp.tls import ClientTls, TlsConfigError

__all__ = [
    "FORMATS",
    "GlobalOptions",
    "UsageError",
    "argify",
    "b",
    "build_parser",
    "delete_request",
    "global_options",
    "go_unquote",
    "parse_compare",
    "parse_duration",
    "parse_txn_op",
    "put_request",
    "range_request",
    "s",
    "tls_flag_error",
]

FORMATS: Final = ("simple", "json", "table")
"""The ``-w/--write-out`` formats kvctl prints."""

DEFAULT_ENDPOINTS: Final = "127.0.0.1:2379"
DEFAULT_DIAL_TIMEOUT: Final = 2.0
DEFAULT_COMMAND_TIMEOUT: Final = 5.0

_INT64_MAX: Final = (1 << 63) - 1
_UINT64_MAX: Final = (1 << 64) - 1


class UsageError(Exception):
    """A command-line value (or txn input line) is invalid; the message says which and why."""


def b(text: str) -> bytes:
    """The bytes of a command-line string (arguments that were not UTF-8 survive unchanged)."""
    return text.encode("utf-8", "surrogateescape")


def s(data: bytes) -> str:
    """The inverse of :func:`b`."""
    return data.decode("utf-8", "surrogateescape")


# -- values ------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``5s``, ``500ms``, ``1m30s``) or a bare number of seconds.

    Raises:
        argparse.ArgumentTypeError: not a positive duration.
    """
    t = text.strip()
    try:
        seconds = float(t)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r} (examples: 5s, 500ms, 1m30s)"
            ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return seconds


_HEX = re.compile(r"[0-9a-fA-F]{1,16}")


def parse_lease_id(text: str) -> int:
    """A lease id given in hex, as etcdctl takes it.

    Raises:
        argparse.ArgumentTypeError: not a 63-bit hex number.
    """
    if not _HEX.fullmatch(text) or int(text, 16) > _INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"bad lease ID arg ({text!r} is not a hex number below 2^63), expecting ID in Hex"
        )
    return int(text, 16)


def parse_member_id(text: str) -> int:
    """A member id given in hex, as etcdctl takes it.

    Raises:
        argparse.ArgumentTypeError: not a 64-bit hex number.
    """
    if not _HEX.fullmatch(text) or int(text, 16) > _UINT64_MAX:
        raise argparse.ArgumentTypeError(
            f"bad member ID arg ({text!r} is not a 64-bit hex number), expecting ID in Hex"
        )
    return int(text, 16)


def _non_negative(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: not an integer") from None
        if not 0 <= value <= _INT64_MAX:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: must be 0 or more")
        return value

    parse.__name__ = what
    return parse


def _positive(what: str) -> Callable[[str], int]:
    inner = _non_negative(what)

    def parse(text: str) -> int:
        value = inner(text)
        if value == 0:
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: must be positive")
        return value

    parse.__name__ = what
    return parse


def parse_endpoints(text: str) -> tuple[str, ...]:
    """A comma-separated endpoint list (``host:port`` or ``http://host:port``).

    Raises:
        argparse.ArgumentTypeError: empty, or an endpoint is not host:port.
    """
    endpoints = tuple(e.strip() for e in text.split(",") if e.strip())
    if not endpoints:
        raise argparse.ArgumentTypeError("no endpoint given (example: 127.0.0.1:2379)")
    for e in endpoints:
        try:
            parse_endpoint(e)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad endpoint {e!r}: expected host:port or http://host:port"
            ) from None
    return endpoints


def parse_format(text: str) -> str:
    """A ``-w/--write-out`` format.

    Raises:
        argparse.ArgumentTypeError: not one of :data:`FORMATS`.
    """
    if text not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not supported as output format (choose from {', '.join(FORMATS)})"
        )
    return text


def _consistency(text: str) -> str:
    if text not in ("l", "s"):
        raise argparse.ArgumentTypeError(
            f"unknown consistency flag {text!r} (l: linearizable, s: serializable)"
        )
    return text


# -- the parser tree ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that can raise :class:`UsageError` instead of exiting."""

    raise_errors = False

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise UsageError(message)
        super().error(message)


def _globals() -> _Parser:
    g = _Parser(add_help=False, allow_abbrev=False)
    sup = argparse.SUPPRESS
    g.add_argument(
        "--endpoints",
        type=parse_endpoints,
        default=sup,
        help=f"comma-separated member endpoints (default: {DEFAULT_ENDPOINTS})",
    )
    g.add_argument(
        "--dial-timeout",
        type=parse_duration,
        default=sup,
        help="time to connect to an endpoint (default: 2s)",
    )
    g.add_argument(
        "--command-timeout",
        type=parse_duration,
        default=sup,
        help="time for a short-running command, excluding the dial timeout (default: 5s)",
    )
    g.add_argument(
        "-w",
        "--write-out",
        type=parse_format,
        default=sup,
        metavar="FORMAT",
        help="output format: simple, json or table (default: simple)",
    )
    g.add_argument(
        "--hex",
        action="store_true",
        default=sup,
        help="print keys and values as hex-escaped bytes (simple) and ids in hex (json)",
    )
    for name, what in (
        ("cacert", "verify the members' certificates with this CA bundle (PEM)"),
        ("cert", "present this client certificate (PEM) to members requiring one"),
        ("key", "the client certificate's unencrypted key (PEM)"),
    ):
        g.add_argument(
            f"--{name}", dest=f"tls_{name}", default=sup, metavar="FILE", help=f"TLS: {what}"
        )
    return g


def _add_put_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("value", nargs="?", help="the value (default: read from standard input)")
    p.add_argument(
        "--lease", type=parse_lease_id, default=0, help="lease ID (in hexadecimal) to attach"
    )
    p.add_argument("--prev-kv", action="store_true", help="print the previous key-value pair")
    p.add_argument("--ignore-value", action="store_true", help="keep the key's current value")
    p.add_argument("--ignore-lease", action="store_true", help="keep the key's current lease")


def _add_get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument(
        "--consistency",
        type=_consistency,
        default="l",
        help="linearizable (l, default) or serializable (s)",
    )
    p.add_argument("--order", default="", help="ASCEND or DESCEND (ASCEND by default)")
    p.add_argument("--sort-by", default="", help="CREATE, KEY, MODIFY, VALUE or VERSION")
    p.add_argument("--limit", type=_non_negative("limit"), default=0, help="maximum results")
    p.add_argument("--prefix", action="store_true", help="keys with the given prefix")
    p.add_argument("--from-key", action="store_true", help="keys >= the given key")
    p.add_argument("--rev", type=_non_negative("revision"), default=0, help="read at revision")
    p.add_argument("--keys-only", action="store_true", help="only the keys")
    p.add_argument("--count-only", action="store_true", help="only the count")
    p.add_argument(
        "--print-value-only", action="store_true", help="only the values (simple format)"
    )
    for flag in ("--min-create-rev", "--max-create-rev", "--min-mod-rev", "--max-mod-rev"):
        p.add_argument(flag, type=_non_negative("revision"), default=0)


def _add_del_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument("--prefix", action="store_true", help="keys with the given prefix")
    p.add_argument("--from-key", action="store_true", help="keys >= the given key")
    p.add_argument("--prev-kv", action="store_true", help="print the deleted key-value pairs")
    p.add_argument(
        "--range", action="store_true", help="accepted for etcdctl compatibility (no delay)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``kvctl`` parser (subcommands in ``command``, and ``sub`` for the groups)."""
    g = _globals()
    root = _Parser(
        prog="kvctl",
        description="etcdctl-like commands for a kvapp cluster (over the native protocol).",
        parents=[g],
        allow_abbrev=False,
    )
    cmds = root.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group: argparse._SubParsersAction[_Parser], name: str, help_: str) -> _Parser:
        return group.add_parser(name, help=help_, parents=[g], allow_abbrev=False)

    _add_put_args(leaf(cmds, "put", "put a key"))
    _add_get_args(leaf(cmds, "get", "get a key or a range of keys"))
    _add_del_args(leaf(cmds, "del", "delete a key or a range of keys"))

    p = leaf(cmds, "txn", "run a transaction read from standard input (etcdctl's syntax)")
    p.add_argument("-i", "--interactive", action="store_true", help="print prompts")

    p = leaf(cmds, "watch", "print the events on a key or range until interrupted")
    p.add_argument("key")
    p.add_argument("range_end", nargs="?")
    p.add_argument("--prefix", action="store_true", help="watch a prefix")
    p.add_argument("--rev", type=_non_negative("revision"), default=0, help="start revision")
    p.add_argument("--prev-kv", action="store_true", help="print the previous key-value pairs")

    p = leaf(cmds, "compaction", "drop the history before a revision")
    p.add_argument("revision", type=_positive("revision"))
    p.add_argument("--physical", action="store_true", help="accepted (compaction is immediate)")

    lease = leaf(cmds, "lease", "lease commands").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    p = leaf(lease, "grant", "create a lease")
    p.add_argument("ttl", type=_positive("TTL"))
    p = leaf(lease, "revoke", "revoke a lease, deleting its keys")
    p.add_argument("lease_id", type=parse_lease_id, metavar="ID")
    p = leaf(lease, "timetolive", "a lease's remaining time")
    p.add_argument("lease_id", type=parse_lease_id, metavar="ID")
    p.add_argument("--keys", action="store_true", help="also list the attached keys")
    leaf(lease, "list", "list the leases")
    p = leaf(lease, "keep-alive", "renew a lease until interrupted")
    p.add_argument("lease_id", type=parse_lease_id, metavar="ID")
    p.add_argument("--once", action="store_true", help="renew once and exit")

    member = leaf(cmds, "member", "membership commands").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    leaf(member, "list", "list the members")
    p = leaf(member, "add", "add a member")
    p.add_argument("name", nargs="+", metavar="NAME")
    p.add_argument("--peer-urls", default="", help="comma-separated peer URLs of the member")
    p.add_argument("--learner", action="store_true", help="add it as a learner")
    p.add_argument(
        "--initial-cluster-token",
        default=None,
        help="the cluster's token, for the printed kvapp serve command (checked)",
    )
    p.add_argument(
        "--listen-client-urls",
        default=None,
        help="client URLs for the printed kvapp serve command",
    )
    for name, what in (("remove", "remove a member"), ("promote", "promote a learner")):
        p = leaf(member, name, what)
        p.add_argument("member_id", type=parse_member_id, metavar="ID")
    p = leaf(member, "update", "give a member new peer URLs")
    p.add_argument("member_id", type=parse_member_id, metavar="ID")
    p.add_argument("--peer-urls", default="", help="comma-separated new peer URLs of the member")

    alarm = leaf(cmds, "alarm", "alarm commands").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    leaf(alarm, "list", "list the raised alarms")
    leaf(alarm, "disarm", "clear every raised alarm")

    snapshot = leaf(cmds, "snapshot", "snapshot commands").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    p = leaf(snapshot, "save", "stream a snapshot of one member's state into a file")
    p.add_argument("filename")
    p.add_argument(
        "--consistency",
        type=_consistency,
        default="l",
        help="l (default): holds every write acknowledged before (needs a leader); s: the "
        "member's own state (works without a quorum)",
    )

    from kvapp.ctl.lock import add_lock_parsers  # noqa: PLC0415 - it imports this module

    add_lock_parsers(cmds, leaf)

    endpoint = leaf(cmds, "endpoint", "endpoint commands").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True
    )
    for name, what in (("status", "each endpoint's status"), ("health", "each endpoint's health")):
        p = leaf(endpoint, name, what)
        p.add_argument(
            "--cluster", action="store_true", help="use every member's client URLs as endpoints"
        )
    return root


# -- global options ----------------------------------------------------------------------------


@attrs.frozen
class GlobalOptions:
    """The global flags, after the environment and defaults are applied."""

    endpoints: tuple[str, ...]
    dial_timeout: float
    command_timeout: float
    write_out: str
    hex: bool
    tls: ClientTls | None = None


def global_options(ns: argparse.Namespace, env: Mapping[str, str]) -> GlobalOptions:
    """Resolve the global flags: the flag, else ``ETCDCTL_<FLAG>``, else etcdctl's default.

    Raises:
        UsageError: an environment variable holds an invalid value.
    """

    def pick(attr: str, parse: Callable[[str], object], default: str) -> object:
        if hasattr(ns, attr):
            return getattr(ns, attr)
        var = "ETCDCTL_" + attr.upper()
        raw = env.get(var)
        if raw is None:
            return parse(default)
        try:
            return parse(raw)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"{var}: {e}") from None

    endpoints = pick("endpoints", parse_endpoints, DEFAULT_ENDPOINTS)
    dial = pick("dial_timeout", parse_duration, f"{DEFAULT_DIAL_TIMEOUT}s")
    command = pick("command_timeout", parse_duration, f"{DEFAULT_COMMAND_TIMEOUT}s")
    fmt = pick("write_out", parse_format, "simple")
    hex_ = ns.hex if hasattr(ns, "hex") else env.get("ETCDCTL_HEX", "") in ("1", "true")
    assert isinstance(endpoints, tuple)
    assert isinstance(dial, float)
    assert isinstance(command, float)
    assert isinstance(fmt, str)
    # TLS as etcdctl: with any of its files, or for an https:// endpoint (the system's roots)
    files = [
        getattr(ns, f"tls_{name}", None) or env.get(f"ETCDCTL_{name.upper()}") or None
        for name in ("cacert", "cert", "key")
    ]
    tls = None
    if any(files) or any(e.startswith("https://") for e in endpoints):
        tls = ClientTls(*files)
    return GlobalOptions(endpoints, dial, command, fmt, bool(hex_), tls)


def tls_flag_error(e: TlsConfigError) -> str:
    """``e``'s message, naming kvctl's flag (``--cacert``, ``--cert`` or ``--key``)."""
    flag = {"trusted_ca_file": "--cacert", "cert_file": "--cert", "key_file": "--key"}
    return f"{flag.get(e.field, 'TLS')}: {e}"


# -- building requests from parsed arguments ---------------------------------------------------

_ORDERS: Final = {"": SortOrder.NONE, "ASCEND": SortOrder.ASCEND, "DESCEND": SortOrder.DESCEND}
_TARGETS: Final = {
    "": SortTarget.KEY,
    "KEY": SortTarget.KEY,
    "CREATE": SortTarget.CREATE,
    "MODIFY": SortTarget.MOD,
    "VALUE": SortTarget.VALUE,
    "VERSION": SortTarget.VERSION,
}


def _range_of(ns: argparse.Namespace, command: str) -> tuple[bytes, bytes]:
    if ns.prefix and ns.from_key:
        raise UsageError("`--prefix` and `--from-key` cannot be set at the same time, choose one")
    key = b(ns.key)
    if ns.range_end is not None:
        if ns.prefix or ns.from_key:
            raise UsageError(
                f"{command}: too many arguments, only accept one argument when `--prefix` or "
                "`--from-key` is set"
            )
        return key, b(ns.range_end)
    if ns.prefix:
        return key_range(key, prefix=True)
    if ns.from_key:
        return key or ALL_KEYS_END, ALL_KEYS_END
    return key, b""


def put_request(ns: argparse.Namespace, stdin: Callable[[], bytes]) -> PutRequest:
    """The put a parsed ``put`` asks for (the value from ``stdin()`` if not given).

    Raises:
        UsageError: inconsistent arguments.
    """
    if ns.ignore_value:
        if ns.value is not None:
            raise UsageError("put command needs only 1 argument when 'ignore-value' is set")
        value = b""
    else:
        value = b(ns.value) if ns.value is not None else stdin()
    return PutRequest(b(ns.key), value, ns.lease, ns.prev_kv, ns.ignore_value, ns.ignore_lease)


def range_request(ns: argparse.Namespace) -> RangeRequest:
    """The range a parsed ``get`` asks for, built as etcdctl builds it.

    Raises:
        UsageError: inconsistent arguments.
    """
    if ns.keys_only and ns.count_only:
        raise UsageError(
            "`--keys-only` and `--count-only` cannot be set at the same time, choose one"
        )
    key, end = _range_of(ns, "get")
    order = _ORDERS.get(ns.order.upper())
    if order is None:
        raise UsageError(f"bad sort order {ns.order} (ASCEND or DESCEND)")
    target = _TARGETS.get(ns.sort_by.upper())
    if target is None:
        raise UsageError(f"bad sort target {ns.sort_by} (CREATE, KEY, MODIFY, VALUE or VERSION)")
    if target is SortTarget.KEY and order is SortOrder.ASCEND:
        order = SortOrder.NONE  # the server's natural order (etcd's clientv3.WithSort)
    for low, high, what in (
        (ns.min_create_rev, ns.max_create_rev, "create"),
        (ns.min_mod_rev, ns.max_mod_rev, "mod"),
    ):
        if high and low > high:
            raise UsageError(f"--min-{what}-rev ({low}) > --max-{what}-rev ({high})")
    return RangeRequest(
        key,
        end,
        limit=ns.limit,
        revision=ns.rev,
        sort_order=order,
        sort_target=target,
        serializable=ns.consistency == "s",
        keys_only=ns.keys_only,
        count_only=ns.count_only,
        min_mod_revision=ns.min_mod_rev,
        max_mod_revision=ns.max_mod_rev,
        min_create_revision=ns.min_create_rev,
        max_create_revision=ns.max_create_rev,
    )


def delete_request(ns: argparse.Namespace) -> DeleteRangeRequest:
    """The delete a parsed ``del`` asks for.

    Raises:
        UsageError: inconsistent arguments.
    """
    key, end = _range_of(ns, "del")
    return DeleteRangeRequest(key, end, ns.prev_kv)


def watch_range(ns: argparse.Namespace) -> tuple[bytes, bytes]:
    """The ``(key, range_end)`` a parsed ``watch`` asks for.

    Raises:
        UsageError: both a range end and ``--prefix``.
    """
    if ns.range_end is not None and ns.prefix:
        raise UsageError("`range_end` and `--prefix` are mutually exclusive")
    if ns.prefix:
        return key_range(b(ns.key), prefix=True)
    return b(ns.key), b(ns.range_end or "")


# -- etcdctl's txn syntax ----------------------------------------------------------------------

_ARG = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?""")
_SIMPLE_ESCAPES: Final = {
    "a": 7,
    "b": 8,
    "f": 12,
    "n": 10,
    "r": 13,
    "t": 9,
    "v": 11,
    "\\": 92,
    "'": 39,
    '"': 34,
}


def go_unquote(token: str) -> bytes:
    r"""The bytes of a Go string literal: ``"double-quoted"`` with Go escapes, or ```raw```.

    Raises:
        ValueError: not a valid literal.
    """
    if len(token) >= 2 and token[0] == token[-1] == "`":
        return b(token[1:-1])
    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise ValueError(f"{token} is not a quoted string")
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c in {'"', "\n"}:
            raise ValueError(f"{token}: unescaped {c!r}")
        if c != "\\":
            out += b(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError(f"{token}: dangling backslash")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width is not None:
            digits = body[i : i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"{token}: bad \\{e} escape")
            i += width
            if e == "x":
                out.append(int(digits, 16))
            else:
                try:
                    out += chr(int(digits, 16)).encode()
                except (ValueError, UnicodeEncodeError):
                    raise ValueError(f"{token}: bad \\{e} escape") from None
            continue
        if e in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) != 3 or not all(d in "01234567" for d in digits):
                raise ValueError(f"{token}: bad octal escape")
            value = int(digits, 8)
            if value > 255:
                raise ValueError(f"{token}: octal escape above 255")
            out.append(value)
            i += 2
            continue
        raise ValueError(f"{token}: unknown escape \\{e}")
    return bytes(out)


def argify(line: str) -> list[str]:
    """Split a txn line into arguments as etcdctl does (quotes: ``"go escapes"``, ``'raw'``).

    Raises:
        UsageError: a double-quoted argument is malformed.
    """
    args = []
    for token in _ARG.findall(line):
        if token.startswith("'"):
            args.append(token[1:-1])
        elif token.startswith('"'):
            try:
                args.append(s(go_unquote(token)))
            except ValueError as e:
                raise UsageError(f"invalid quoted argument: {e}") from None
        else:
            args.append(token)
    return args


def _scan_quoted(text: str, line: str) -> tuple[bytes, str]:
    """A Go quoted string at the start of ``text`` (after spaces), and what follows it."""
    text = text.lstrip()
    if text.startswith("`"):
        end = text.find("`", 1)
    elif text.startswith('"'):
        end, i = -1, 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                end = i
                break
            i += 1
    else:
        end = -1
    if end < 0:
        raise UsageError(f"malformed comparison: {line}")
    try:
        return go_unquote(text[: end + 1]), text[end + 1 :]
    except ValueError as e:
        raise UsageError(f"malformed comparison: {line} ({e})") from None


_COMPARE_OPS: Final = {"=": "==", "==": "==", "!=": "!=", ">": ">", "<": "<"}


def parse_compare(line: str) -> Compare:
    """One compare line of etcdctl's txn syntax, e.g. ``mod("k") > "3"``.

    Targets: ``ver``/``version``, ``c``/``create``, ``m``/``mod`` (decimal), ``val``/``value``
    (a string) and ``lease`` (hex); operators ``=``, ``!=``, ``>``, ``<``.

    Raises:
        UsageError: the line is malformed.
    """
    target, paren, rest = line.partition("(")
    if not paren:
        raise UsageError(f"malformed comparison: {line}")
    target = target.strip()
    key, rest = _scan_quoted(rest, line)
    rest = rest.lstrip()
    if not rest.startswith(")"):
        raise UsageError(f"malformed comparison: {line}")
    parts = rest[1:].split(None, 1)
    if len(parts) != 2:
        raise UsageError(f"malformed comparison: {line}")
    op = _COMPARE_OPS.get(parts[0])
    if op is None:
        raise UsageError(f"malformed comparison: {line} (unknown operator {parts[0]})")
    operand, _ = _scan_quoted(parts[1], line)
    if target in ("val", "value"):
        return txnops.value(key, op, operand)
    try:
        if target in ("ver", "version"):
            return txnops.version(key, op, int(operand, 10))
        if target in ("c", "create"):
            return txnops.create(key, op, int(operand, 10))
        if target in ("m", "mod"):
            return txnops.mod(key, op, int(operand, 10))
        if target == "lease":
            return txnops.lease(key, op, int(operand, 16))
    except ValueError:
        raise UsageError(f"invalid txn compare request: {line}") from None
    raise UsageError(f"malformed comparison: {line} (unknown target {target})")


def _op_parsers() -> dict[str, _Parser]:
    parsers = {}
    for name, add in (("put", _add_put_args), ("get", _add_get_args), ("del", _add_del_args)):
        p = _Parser(prog=name, add_help=False, allow_abbrev=False)
        p.raise_errors = True
        add(p)
        parsers[name] = p
    return parsers


def parse_txn_op(line: str) -> RequestOp:
    """One operation line of etcdctl's txn syntax: ``put k v``, ``get k [--prefix ...]``, ``del k``.

    Raises:
        UsageError: the line is malformed.
    """
    args = argify(line)
    parsers = _op_parsers()
    if len(args) < 2 or args[0] not in parsers:
        raise UsageError(f"invalid txn request: {line} (expected put, get or del and a key)")
    try:
        ns = parsers[args[0]].parse_args(args[1:])
        if args[0] == "put":
            if ns.value is None and not ns.ignore_value:
                raise UsageError("put needs a key and a value")
            return put_request(ns, bytes)
        if args[0] == "get":
            return range_request(ns)
        return delete_request(ns)
    except UsageError as e:
        raise UsageError(f"invalid txn request: {line} ({e})") from None


def read_txn(
    lines: Iterable[str], prompt: Callable[[str], None] | None = None
) -> tuple[list[Compare], list[RequestOp], list[RequestOp]]:
    """Compares, success ops and failure ops from etcdctl's txn input, one section per block.

    Sections end at a blank line (or at the end of the input); ``prompt`` is called with each
    section's etcdctl prompt before it is read.

    Raises:
        UsageError: a line is malformed.
    """
    it = iter(lines)

    def section(title: str) -> list[str]:
        if prompt is not None:
            prompt(title)
        out = []
        for raw in it:
            line = raw.strip()
            if not line:
                break
            out.append(line)
        return out

    compares = [parse_compare(line) for line in section("compares:")]
    success = [parse_txn_op(line) for line in section("success requests (get, put, del):")]
    failure = [parse_txn_op(line) for line in section("failure requests (get, put, del):")]
    return compares, success, failure
