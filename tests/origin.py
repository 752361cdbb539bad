"""A threaded HTTP server on loopback for tests that make the code under test send requests:
an origin to download from, a validator to POST to, a watched address that must see no
connection."""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit


class Origin:
    """An HTTP(S) server on ``host`` counting the connections it accepts and recording each
    request's (path, Host).

    GET: ``/ok`` answers 200 "hello", ``/to?url=U`` redirects to U (302), ``/loop`` redirects
    to itself, ``/.../<name>`` serves ``files[name]``; anything else is a 404.

    POST: records (Content-Type, body) and answers as ``answer`` says: 200, another status,
    or "hang" (answers 200 only after ``HANG_SECONDS``). ``refuse_type`` refuses (403) one
    content type whatever ``answer`` is.
    """

    HANG_SECONDS = 5.0

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.received: list[tuple[str, bytes]] = []
        self.answer: int | str = 200
        self.refuse_type: str | None = None
        self.lock = threading.Lock()
        served = dict(files or {})
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def redirect(self, target: str) -> None:
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with origin.lock:
                    origin.requests.append((self.path, self.headers.get("Host", "")))
                split = urlsplit(self.path)
                if split.path == "/ok":
                    self.reply(200, b"hello")
                elif split.path == "/to":
                    self.redirect(parse_qs(split.query)["url"][0])
                elif split.path == "/loop":
                    self.redirect("/loop")
                elif (data := served.get(split.path.rsplit("/", 1)[-1])) is not None:
                    self.reply(200, data)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                content_type = self.headers.get("Content-Type", "")
                with origin.lock:
                    origin.received.append((content_type, body))
                    answer = origin.answer
                if content_type == origin.refuse_type:
                    answer = 403
                if answer == "hang":
                    time.sleep(origin.HANG_SECONDS)
                    answer = 200
                assert isinstance(answer, int)
                with contextlib.suppress(OSError):  # the client may have given up
                    self.reply(answer, b"ok")

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def verify_request(self, request: object, client_address: object) -> bool:
                with origin.lock:
                    origin.connections += 1
                return True

            def get_request(self) -> tuple[socket.socket, object]:
                sock, address = super().get_request()
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_side=True)
                return sock, address

        self.httpd = Server((host, port), Handler)
        self.port = int(self.httpd.server_address[1])
        name = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{name}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def paths(self) -> list[str]:
        """The path of each GET request, in order."""
        with self.lock:
            return [path for path, _ in self.requests]

    def take(self) -> list[tuple[str, bytes]]:
        """What was POSTed since the last call."""
        with self.lock:
            received, self.received = self.received, []
        return received

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
