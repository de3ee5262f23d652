"""aetcd (an asyncio etcd v3 client from PyPI) against kvapp: put/get/delete, txn, watch, leases.

aetcd's generated protobuf modules register etcd's message names in protobuf's default pool, as
kvapp's do, so it runs in a subprocess (``aetcd_session.py``) against three real in-process
members serving the etcd API on 127.0.0.1. Skipped when aetcd is not installed (the ``test``
extra has it), failed then under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.kvapp.etcd.helpers import aio
from tests.kvapp.etcd.test_member_api import _published, _start, _stop

SCRIPT = Path(__file__).with_name("aetcd_session.py")

if importlib.util.find_spec("aetcd") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("aetcd is missing: the test extra installs it")
    pytest.skip("aetcd is not installed (pip install aetcd)", allow_module_level=True)


@aio
async def test_aetcd_puts_gets_deletes_txns_watches_and_leases_on_kvapp() -> None:
    members, servers, clients = await _start()
    try:
        await _published(members)
        # A follower: writes, lease keep-alives and time-to-live are forwarded or proposed.
        follower = next(s for s, m in zip(servers, members, strict=True) if not m.node.is_leader)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            follower.endpoint,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 25)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode(errors="replace")
        assert proc.returncode == 0, f"the aetcd session failed:\n{text}"
        assert text.strip().endswith("aetcd session ok"), text
    finally:
        await _stop(members, servers, clients)
