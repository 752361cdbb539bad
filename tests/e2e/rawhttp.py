"""A minimal HTTP/1.1 client on one socket (h11), for tests that must see the connection
itself: whether an answer came before the body was sent, whether the next request goes
over the same socket, whether the server closed it."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator

import h11

BOUNDARY = "pictrs-test-boundary"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:80]!r}>"


class RawConnection:
    """One TCP connection; ``request`` sends a whole request and reads its answer."""

    def __init__(
        self,
        port: int,
        *,
        timeout: float = 10.0,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.local = self.sock.getsockname()
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a client killed mid-request does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_head(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> None:
        self.sock.sendall(
            self.conn.send(
                h11.Request(method=method, target=target, headers=[("Host", "test"), *headers])
            )
        )

    def send_body(self, data: bytes) -> None:
        self.sock.sendall(self.conn.send(h11.Data(data=data)))

    def end(self) -> None:
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Answer:
        headers = list(headers)
        if body or method in ("POST", "PUT"):
            headers.append(("Content-Length", str(len(body))))
        self.send_head(method, target, headers)
        try:
            if body:
                self.send_body(body)
            self.end()
        except OSError:
            pass  # the server answered and closed before taking it all: read the answer
        return self.read_answer()

    def read_answer(self) -> Answer:
        status, head, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                head = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Answer(status, head, b"".join(chunks))

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    def server_closed(self, timeout: float = 5.0) -> bool:
        """True when the server closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while data := self.sock.recv(65536):
                del data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return True


def multipart(files: Iterable[tuple[str, bytes]]) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an upload of ``(filename, bytes)`` parts named ``images[]``."""
    parts = []
    for name, data in files:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images[]"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return [("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], body


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
