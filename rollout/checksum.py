"""The checksum of a weight update's bytes: what proves they arrived whole and in order.

It guards against bytes truncated, reordered or corrupted on the way, not against an
attacker (the data plane's token keeps strangers out, TLS is the security layer), so it
need not be cryptographic: it must be wide enough that a damaged stream of gigabytes never
matches by chance, and cheap enough not to bound the push. XXH3-128 (``xxhash``, a C
library that releases the GIL on large inputs) hashes at about 19 GiB/s on one core here,
against 1.7 GiB/s for sha256 with SHA-NI and 0.9 GiB/s for blake2b; crc32 (4 GiB/s) has 32 bits
only, too few to rely on across many gigabyte-sized pushes. Both ends hash every byte, so
sha256 would cost a push some 0.3 CPU seconds per 256 MB, more than the transfer itself.

sha256 stays accepted, named or from senders that name no algorithm (they came before it
was named and put the digest in ``WeightChunk.sha256``).

``xxhash`` comes with the ``[rollout]`` extra; it is imported only when a hash is made, so
the rest of the client (``rlfleet generate``) works without it.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

XXH3_128 = "xxh3-128"
SHA256 = "sha256"
DEFAULT = XXH3_128
"""What rlfleet's senders use."""
ALGORITHMS = (XXH3_128, SHA256)
LEGACY = SHA256
"""The algorithm of a stream whose ``begin`` names none."""


class ChecksumUnavailable(RuntimeError):
    """The library an algorithm needs is not installed (the message says what to install)."""


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for ``algorithm`` (one of ``ALGORITHMS``); ``ValueError`` otherwise,
    ``ChecksumUnavailable`` when its library is missing."""
    if algorithm == XXH3_128:
        try:
            import xxhash
        except ImportError as e:
            raise ChecksumUnavailable(
                f"{XXH3_128} checksums need the xxhash package ({e}): install rlfleet[rollout]"
            ) from None
        return xxhash.xxh3_128()
    if algorithm == SHA256:
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
