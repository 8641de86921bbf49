"""The worker's wire format: u32 length, JSON header, then the binary blobs it lists.

Shared by the worker and its host side (stdlib only, imports nothing else of the worker).
"""

import json
import os
import struct

FRAME = struct.Struct(">I")

MAX_FRAME = 1 << 30


def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_into(fd, n):
    """n bytes read straight into a bytearray, which the reader can wipe once it is done."""
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if not got:
            raise EOFError
        pos += got
    view.release()
    return buf


def read_frame(fd, wipeable=False):
    """One frame: u32 header length, JSON header, then the blobs it lists by size (as
    bytearrays when `wipeable`)."""
    (size,) = FRAME.unpack(read_exact(fd, FRAME.size))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    header = json.loads(read_exact(fd, size))
    read = read_into if wipeable else read_exact
    blobs = [read(fd, n) for n in header.pop("_blobs", [])]
    return header, blobs


def write_frame(fd, header, blobs=()):
    header = dict(header, _blobs=[len(b) for b in blobs])
    data = json.dumps(header).encode()
    payload = b"".join([FRAME.pack(len(data)), data, *blobs])
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]
