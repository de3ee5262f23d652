"""kvctl's entry point: parse, check, run one command, map failures to etcdctl's messages.

Exit status: 0 on success; 1 when the command failed (``Error: <message>`` on standard error,
with etcd's own text for the errors a member answered with, and a clear message when no
endpoint could be reached); 2 for bad arguments or txn input; 130 when interrupted; for
``lock NAME -- COMMAND``, COMMAND's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from kvapp.client import AsyncClient
from kvapp.ctl.commands import COMMANDS, CommandError, Ctl
from kvapp.ctl.lock import LOCK_COMMANDS
from kvapp.ctl.output import TABLE_COMMANDS, Output, Printer, go_duration
from kvapp.ctl.parse import (
    GlobalOptions,
    UsageError,
    build_parser,
    global_options,
    tls_flag_error,
)
from kvapp.errors import KvappError
from kvapp.tls import TlsConfigError

__all__ = ["main", "run"]


def _command_name(ns: object) -> str:
    sub = getattr(ns, "sub", None)
    command = str(getattr(ns, "command", ""))
    return f"{command} {sub}" if sub else command


async def run(
    argv: Sequence[str],
    *,
    stdin: BinaryIO,
    stdout: BinaryIO,
    stderr: BinaryIO,
    environ: Mapping[str, str],
) -> int:
    """Run one kvctl command line on the current event loop; returns the exit status.

    Args:
        argv: the arguments (without the program name).
        stdin: standard input (binary).
        stdout: where results go (binary).
        stderr: where errors go (binary).
        environ: the environment (``ETCDCTL_*`` variables).
    """
    err = Output(stderr, autoflush=True)
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and the message (or --help)
        return e.code if isinstance(e.code, int) else 2
    name = _command_name(ns)
    try:
        opts = global_options(ns, environ)
        if opts.write_out == "table" and name not in TABLE_COMMANDS:
            raise UsageError(f"table is not supported as output format for {name}")
    except UsageError as e:
        err.line(f"Error: {e}")
        return 2
    out = Output(stdout)
    try:
        client = AsyncClient(
            opts.endpoints,
            connect_timeout=opts.dial_timeout,
            request_timeout=opts.command_timeout,
            tls=opts.tls,
        )
    except TlsConfigError as e:
        err.line(f"Error: {tls_flag_error(e)}")
        return 2
    ctl = Ctl(
        ns,
        opts,
        client,
        printer=Printer(opts.write_out, out, hex_=opts.hex),
        err=err,
        stdin=stdin,
    )
    try:
        return await (COMMANDS.get(name) or LOCK_COMMANDS[name])(ctl)
    except UsageError as e:
        err.line(f"Error: {e}")
        return 2
    except (CommandError, KvappError) as e:
        err.line(f"Error: {str(e) or type(e).__name__}")
        return 1
    except TimeoutError:
        err.line(f"Error: context deadline exceeded: {_timeout_message(opts)}")
        return 1
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.flush()
        await client.close()


def _timeout_message(opts: GlobalOptions) -> str:
    return (
        f"no answer from {', '.join(opts.endpoints)} within "
        f"{go_duration(opts.dial_timeout + opts.command_timeout)} "
        "(--dial-timeout + --command-timeout)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``kvctl`` / ``python -m kvapp.ctl``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(
            run(
                args,
                stdin=sys.stdin.buffer,
                stdout=sys.stdout.buffer,
                stderr=sys.stderr.buffer,
                environ=os.environ,
            )
        )
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `kvctl watch k | head -1`): stop quietly, as a pipe does.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
