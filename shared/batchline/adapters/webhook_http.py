"""WebhookSender over HTTP(S), with the standard library (nothing to import at cold start).

The receiver's host is resolved once, every address checked (`domain.webhooks.
address_problem`), and the connection made to an address that passed, with the host name
kept for TLS (SNI and certificate check) and the Host header: a name that resolves to an
internal address, or is re-pointed at one between the check and the connect (DNS
rebinding), is never reached. Redirects are not followed (a 3xx is not a 2xx: retried).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urlsplit

from batchline.domain.webhooks import WebhookRefused, address_problem
from batchline.errors import RetryableError

USER_AGENT = "batchline-webhooks/1"


class HttpWebhookSender:
    """POSTs with a deadline; `allow_insecure_local` also takes http:// to loopback."""

    def __init__(self, *, allow_insecure_local: bool = False) -> None:
        self._allow_local = allow_insecure_local
        self._tls = ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        parts = urlsplit(url)
        host = parts.hostname or ""
        secure = parts.scheme == "https"
        if not secure and not self._allow_local:
            raise WebhookRefused(f"{parts.scheme}:// is not delivered to; use https://")
        port = parts.port or (443 if secure else 80)
        address = self._address(host, port, secure)
        connection: http.client.HTTPConnection
        if secure:
            connection = _PinnedHTTPS(host, port, address, timeout, self._tls)
        else:
            connection = _PinnedHTTP(host, port, address, timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.connect()
            _remaining(connection, deadline)
            connection.request(
                "POST", target, body=body, headers={**headers, "user-agent": USER_AGENT}
            )
            _remaining(connection, deadline)
            response = connection.getresponse()
            return int(response.status)
        except (OSError, http.client.HTTPException) as exc:
            raise RetryableError(f"POST to {host}: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()

    def _address(self, host: str, port: int, secure: bool) -> str:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise RetryableError(f"cannot resolve {host}: {exc}") from exc
        refused = []
        for *_, sockaddr in found:
            literal = str(sockaddr[0])
            address = ipaddress.ip_address(literal.split("%", 1)[0])
            problem = address_problem(address)
            if problem is None and secure:
                return literal
            if self._allow_local and address.is_loopback:
                return literal
            refused.append(problem or f"{address}: only https:// is delivered to")
        raise WebhookRefused(f"{host} resolves to no address batchline may connect to: {refused}")


def _remaining(connection: http.client.HTTPConnection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the receiver took too long")
    if connection.sock is not None:
        connection.sock.settimeout(left)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self.host)
