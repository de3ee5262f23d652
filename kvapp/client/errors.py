"""The client's own exceptions (the server's errors arrive as :class:`~kvapp.errors.EtcdError`).

A request through :class:`~kvapp.client.AsyncClient` ends in one of:

- its result;
- the :class:`~kvapp.errors.EtcdError` subclass the member answered with (the same class, code
  and text the member raised);
- :class:`~kvapp.service.OutcomeUnknown`: a write may or may not have been applied, and retries
  with the same request id could not tell;
- :class:`Unavailable`: no endpoint could serve it within the allowed attempts (for a write:
  it was certainly not applied, else the outcome would be unknown).
"""

from __future__ import annotations

from kvapp.errors import KvappError

__all__ = ["ClientError", "LinkClosed", "ProtocolError", "Unavailable"]


class ClientError(KvappError):
    """Root of the failures the client itself detects."""


class Unavailable(ClientError):
    """No endpoint could serve the request (all unreachable, or failing, for every attempt)."""


class ProtocolError(ClientError):
    """The server sent something this client does not understand, or refused the handshake."""


class LinkClosed(ClientError):
    """The connection carrying a request was lost before its answer arrived.

    Attributes:
        endpoint: the endpoint of the lost connection.
        sent: whether the request may have left this client; if not, it certainly was not
            applied and may be retried freely.
    """

    def __init__(self, endpoint: str, reason: str, *, sent: bool) -> None:
        super().__init__(f"{endpoint}: {reason}")
        self.endpoint = endpoint
        self.sent = sent
