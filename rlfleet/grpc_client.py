"""Plumbing shared by the project's gRPC clients (the verifier's, the rollout service's)."""

from __future__ import annotations

import grpc

from rlfleet.errors import Unavailable


class ServerUnavailable(grpc.aio.AioRpcError, Unavailable):
    """No server at ``target`` answered (UNAVAILABLE) in any of the client's attempts.

    Still the ``AioRpcError`` it replaces (``code()``, ``details()``), with a message a
    person can read; subclasses name the kind of server (``what``).
    """

    what = "server"

    def __init__(self, target: str, attempts: int, last: grpc.aio.AioRpcError) -> None:
        super().__init__(
            last.code(),
            last.initial_metadata(),
            last.trailing_metadata(),
            last.details(),
            last.debug_error_string(),
        )
        self.target = target
        self.attempts = attempts

    def __str__(self) -> str:
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        return f"no {self.what} answers at {self.target} after {tries} ({self.details()})"
