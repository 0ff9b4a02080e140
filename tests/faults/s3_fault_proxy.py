"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3-compatible endpoint (the moto server).

Every request gets an index (0, 1, 2, ... in arrival order). A ``decide(index, method, path)`` callable picks,
per request, either ``None`` (forward it upstream unchanged and relay the answer) or a fault:

* ``"503"``: HTTP 503 ``ServiceUnavailable`` (S3's XML error body);
* ``"throttle"``: HTTP 503 ``SlowDown``, S3's throttling answer;
* ``"reset"``: the TCP connection is reset (``SO_LINGER`` 0, then close) before any byte of an answer;
* ``"403"``: HTTP 403 ``AccessDenied``, a permanent error.

``proxy.log`` records ``(index, method, path, outcome)`` for every request, ``proxy.injected()`` counts the
faults by kind.
"""
from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

Decide = Callable[[int, str, str], "str | None"]

_ERRORS = {"503": (503, "ServiceUnavailable", "Service is unable to handle request."),
           "throttle": (503, "SlowDown", "Please reduce your request rate."),
           "403": (403, "AccessDenied", "Access Denied")}
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}


def every_other(kinds: list[str], first: int) -> Decide:
    """Faults on the even-numbered requests among the first ``first``, cycling through ``kinds``; so every
    request that fails is followed by one that passes (a client's retry gets through)."""
    def decide(i: int, method: str, path: str) -> str | None:
        return kinds[(i // 2) % len(kinds)] if i < first and i % 2 == 0 else None
    return decide


class FaultProxy:
    """See the module docstring. ``url`` is the endpoint to give clients; ``stop()`` shuts it down."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.log: list[tuple[int, str, str, str]] = []
        self._decide: Decide = lambda i, m, p: None
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" (uploads) answered

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    index = len(proxy.log)
                    fault = proxy._decide(index, self.command, self.path)
                    proxy.log.append((index, self.command, self.path, fault or "forwarded"))
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    status, code, message = _ERRORS[fault]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}'
                           f"</Message><Resource>{self.path}</Resource></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", length or "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:  # the socket of a "reset" request is gone
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:  # resets make the handler's I/O fail
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def set_faults(self, decide: Decide) -> None:
        """Use ``decide`` from the next request on; the request index and the log start again at 0."""
        with self._lock:
            self._decide = decide
            self.log = []

    def injected(self) -> Counter:
        """How many requests got each fault since the last :meth:`set_faults`."""
        with self._lock:
            return Counter(outcome for *_, outcome in self.log if outcome != "forwarded")

    def requests_for(self, suffix: str) -> list[tuple[int, str, str, str]]:
        """The logged requests whose path (query string removed) ends with ``suffix``."""
        with self._lock:
            return [r for r in self.log if r[2].split("?")[0].endswith(suffix)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
