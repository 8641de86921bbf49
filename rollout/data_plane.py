"""The weight push's data plane: an update's bytes over a one-shot raw TCP connection beside
its UpdateWeights call, which stays the control plane (manifest, checksum, final status).

gRPC carries a push's bytes at less than half what a plain socket does (framing, HTTP/2
flow control, its own copies and buffers), and the hashing and spooling come on top.
So a sender that asks (``WeightUpdateBegin.data_plane``) is offered, in the call's initial
metadata, a port and a token; it connects, presents the token, writes the tensors' raw bytes
in manifest order and closes its side; then it sends the ``checksum`` message on the call,
whose status is the update's outcome as on the gRPC-only path.

What the server side guarantees:
- The port is chosen by the kernel and bound to the host the gRPC server listens on; it
  accepts one connection, within ``timeout_s``, and is closed as soon as it has.
- The connection's first ``TOKEN_BYTES`` must be the update's token (32 random bytes, sent
  only in that call's metadata, compared in constant time); anything else refuses the
  update, as a connection that sends more or fewer bytes than the manifest announces does.
- The bytes go to the update's ``Spool`` (hashed and written in its threads) through
  ``depth + 1`` buffers of ``buffer_bytes``: that is all the memory a push takes.
- No TLS: a server with TLS never offers the data plane (its pushes go over gRPC).
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from rlfleet.rollout import checksum as checksums
from rlfleet.rollout.weights import CorruptStream, Spool, WeightSource

TOKEN_BYTES = 32
SEND_BUFFERS = 2
"""Buckets the sender holds: one being read while the other is hashed and sent."""
PORT_KEY = "rlfleet-data-port"
"""Initial metadata of an UpdateWeights call: the data connection's port (decimal)."""
TOKEN_KEY = "rlfleet-data-token"
"""Initial metadata of an UpdateWeights call: the token to present on it (hex)."""


class DataConnectionError(CorruptStream):
    """The data connection did not deliver the update: none came in time, it presented the
    wrong token, it went quiet, or it broke. Refused as a corrupt stream is."""


class NoDataConnection(ConnectionError):
    """The sender could not open the offered data connection (nothing was sent on it)."""


class DataListener:
    """The server's end of one update's data connection: made (bound and listening) before
    ``port`` and ``token`` are offered to the sender, then ``receive`` in a thread of its
    own, ``abort`` from any other, ``close``."""

    def __init__(self, host: str, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")
        self.timeout_s = timeout_s
        self.token = secrets.token_bytes(TOKEN_BYTES)
        host = host.strip("[]")  # (an IPv6 address as gRPC's address syntax writes it)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.bind((host, 0))
            self._listener.listen(1)
        except OSError:
            self._listener.close()
            raise
        self._listener.settimeout(timeout_s)
        self.port: int = self._listener.getsockname()[1]
        self._conn: socket.socket | None = None
        self._lock = threading.Lock()
        self._aborted = False

    def receive(self, spool: Spool, buffer_bytes: int) -> None:
        """Accept the one connection, check its token, and put exactly ``spool.expected``
        bytes into ``spool`` (then drain it); raises ``DataConnectionError`` or
        ``CorruptStream``. Blocks: run it in a thread; ``abort`` stops it from another."""
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes: must be >= 1")
        conn = self._accept()
        try:
            conn.settimeout(self.timeout_s)
            token = bytearray(TOKEN_BYTES)
            if self._fill(conn, memoryview(token)) < TOKEN_BYTES or not hmac.compare_digest(
                bytes(token), self.token
            ):
                raise DataConnectionError("data connection: it did not present the update's token")
            buffers = [
                memoryview(bytearray(min(buffer_bytes, max(spool.expected, 1))))
                for _ in range(spool.depth + 1)
            ]
            try:
                left, turn = spool.expected, 0
                while left:
                    # Free: ``put_blocking`` leaves at most ``depth`` chunks in progress.
                    buffer = buffers[turn % len(buffers)][: min(left, buffer_bytes)]
                    got = self._fill(conn, buffer)
                    if got:
                        spool.put_blocking(buffer[:got])
                    if got < len(buffer):
                        raise CorruptStream(
                            f"truncated: the data connection ended after "
                            f"{spool.received} of {spool.expected} bytes"
                        )
                    left -= got
                    turn += 1
                if self._recv(conn, bytearray(1)):
                    raise CorruptStream(
                        f"data: more than the {spool.expected} bytes the manifest announces"
                    )
                spool.drain_blocking()
            finally:
                spool.drain_blocking(quiet=True)
        finally:
            conn.close()

    def _accept(self) -> socket.socket:
        try:
            conn, _ = self._listener.accept()
        except TimeoutError:
            raise DataConnectionError(
                f"data connection: none came within {self.timeout_s:g} s"
            ) from None
        except OSError as e:
            raise self._broken(e) from None
        finally:
            with self._lock:
                self._listener.close()  # one connection per update, never a second
        with self._lock:
            if self._aborted:
                conn.close()
                raise DataConnectionError("data connection: the update was called off")
            self._conn = conn
        return conn

    def _recv(self, conn: socket.socket, into: bytearray | memoryview) -> int:
        try:
            return conn.recv_into(into)
        except TimeoutError:
            raise DataConnectionError(
                f"data connection: nothing arrived for {self.timeout_s:g} s"
            ) from None
        except OSError as e:
            raise self._broken(e) from None

    def _fill(self, conn: socket.socket, view: memoryview) -> int:
        """Receive into all of ``view``; fewer bytes only at the end of the connection."""
        done = 0
        while done < len(view):
            got = self._recv(conn, view[done:])
            if not got:
                break
            done += got
        return done

    def _broken(self, e: OSError) -> DataConnectionError:
        if self._aborted:
            return DataConnectionError("data connection: the update was called off")
        return DataConnectionError(f"data connection: {e.strerror or e}")

    def abort(self) -> None:
        """Make ``receive`` return (raising) soon; safe from any thread, and after it."""
        with self._lock:
            self._aborted = True
            for sock in (self._listener, self._conn):
                # Wakes a thread blocked in accept or recv, where closing the socket under
                # it would not. (OSError: not connected, yet or any more.)
                if sock is not None and sock.fileno() >= 0:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the listener (after ``receive`` has returned, or instead of it; idempotent)."""
        with self._lock:
            self._listener.close()


def send(
    host: str,
    port: int,
    token: bytes,
    source: WeightSource,
    bucket_bytes: int,
    timeout_s: float | None,
    checksum: str = checksums.DEFAULT,
) -> str:
    """The sender's side: connect, present ``token``, write every tensor's bytes in manifest
    order and close; returns their digest (hex) in the ``checksum`` algorithm. Raises
    ``NoDataConnection`` when it cannot connect, ``OSError`` when the connection breaks, and
    whatever reading ``source`` raises.

    Three stages run side by side: reading the next bucket (a thread: a learner's source
    gathers and copies tensors there), hashing this one (a thread) and sending it (here);
    the hash, file reads and ``sendall`` release the GIL. ``SEND_BUFFERS`` buckets are held."""
    digest = checksums.new_hasher(checksum)
    try:
        conn = socket.create_connection((host, port), timeout=timeout_s)
    except OSError as e:
        raise NoDataConnection(f"data connection to {host}:{port}: {e.strerror or e}") from e
    views = source.buckets(bucket_bytes, SEND_BUFFERS)
    try:
        with (
            conn,
            ThreadPoolExecutor(1, "push-read") as reader,
            ThreadPoolExecutor(1, "push-hash") as hasher,
        ):
            conn.sendall(token)
            ahead = reader.submit(next, views, None)
            hashed: Future[None] | None = None
            try:
                while (view := ahead.result()) is not None:
                    if hashed is not None:
                        hashed.result()  # the last bucket's buffer is free: read into it
                    ahead = reader.submit(next, views, None)
                    hashed = hasher.submit(digest.update, view)
                    conn.sendall(view)
                if hashed is not None:
                    hashed.result()
            finally:
                ahead.cancel()
                wait([ahead])  # (the reader is done with the source before it closes)
            conn.shutdown(socket.SHUT_WR)
    finally:
        views.close()
    return digest.hexdigest()
