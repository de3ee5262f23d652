"""Client-facing protocols, each a thin translation of a wire format onto one member API.

Every protocol serves one :class:`~kvapp.service.KvService`:

- :mod:`kvapp.server.native`: the native protocol (length-prefixed cbor2 frames carrying many
  pipelined requests), the fast path for kvapp's own Python client.

This package imports none of its protocol modules, so importing one protocol never pulls in the
dependencies of another (e.g. gRPC).
"""
