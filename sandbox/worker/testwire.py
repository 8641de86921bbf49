"""A test-code run's wire: what its two processes say to each other, and what the test
process reports to the judge (testrun.py). Stdlib only, imported by the judge too.

Between the processes travels plain data: None, bool, int, float, complex, str, bytes, and
lists, tuples, dicts, sets and frozensets of them, as length-prefixed JSON. Every container
is tagged (``{"t": [...]}`` for a tuple), so that ``decode`` rebuilds exact built-in types
and nothing else: whatever the program sends, the test process gets objects of its own
built-in types.
"""

import json
import struct

PASS_MARKER = b"rlfleet: the test code ran to its end\n"
"""The test process's report of a pass, the whole of the run's stdout."""
TEST_FAILED = 1
"""Exit status of the test process when an assertion failed (WA)."""
TEST_ERROR = 2
"""Exit status of the test process for any other failure (RE)."""

_LEN = struct.Struct(">I")
MAX_MESSAGE = 1 << 28
MAX_DEPTH = 200
_SMALL_INT = 1 << 62
_TAG_OF: dict[type, str] = {list: "l", tuple: "t", set: "s", frozenset: "f"}
_TYPE_OF: dict[str, type] = {tag: t for t, tag in _TAG_OF.items()}


class ProgramFailed(RuntimeError):
    """The program process ended or broke the protocol while the test needed it."""


def encode(value, lenient, depth=0):
    """A JSON-ready form of plain data; every container is tagged so that `decode` rebuilds
    the exact type. `lenient` (the program's side) turns subclasses of the plain types
    (a namedtuple, a Counter, an IntEnum) into their base type; the test's side is strict."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str or t is float:
        return value
    if t is int:
        return value if -_SMALL_INT < value < _SMALL_INT else {"x": hex(value)}
    if t is list or t is tuple or t is set or t is frozenset:
        return {_TAG_OF[t]: [encode(x, lenient, depth + 1) for x in value]}
    if t is dict:
        return {
            "d": [
                [encode(k, lenient, depth + 1), encode(v, lenient, depth + 1)]
                for k, v in value.items()
            ]
        }
    if t is bytes:
        return {"b": value.hex()}
    if t is complex:
        return {"c": [value.real, value.imag]}
    if lenient:
        for base in (bool, int, float, str, bytes, complex, list, tuple, dict, set, frozenset):
            if isinstance(value, base):
                return encode(_as_base(base, value), lenient, depth)
        if isinstance(value, bytearray):
            return encode(bytes(value), lenient, depth)
    raise TypeError(f"a value of type {t.__name__} is not plain data")


def _as_base(base, value):
    if base is str:
        return str.__str__(value)
    if base is dict:
        return dict(value.items())
    return base(value)


def decode(data, depth=0):
    """Rebuild `encode`'s output as exact built-in types; anything else is refused."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    t = type(data)
    if data is None or t is bool or t is int or t is float or t is str:
        return data
    if t is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag in ("l", "t", "s", "f") and type(body) is list:
            items = [decode(x, depth + 1) for x in body]
            return _TYPE_OF[tag](items)
        if tag == "d" and type(body) is list:
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("malformed dict item")
                out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
            return out
        if tag == "x" and type(body) is str:
            return int(body, 16)
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            re_, im = body
            if type(re_) in (int, float) and type(im) in (int, float):
                return complex(re_, im)
    raise ValueError(f"malformed value of type {t.__name__}")


def send(sock, message):
    data = json.dumps(message).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def receive(sock):
    """One message, or None at end of stream."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_MESSAGE:
        raise ProgramFailed(f"the program sent a message of {size} bytes")
    body = _recv_exact(sock, size)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError as e:
        raise ProgramFailed(f"the program sent a malformed message: {e}") from None


def _recv_exact(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
