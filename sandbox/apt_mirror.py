"""apt's own mirror for Debian bookworm ``main``, read from the machine's apt sources.

The registry-free base image is debootstrapped from it (``deploy/host/setup.sh``), so no
mirror host name is ever written into the project. Stdlib-only: it runs under the system
Python before any virtualenv exists (``python3 -I sandbox/image.py mirror``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

_URI_SCHEMES = ("http://", "https://", "file:/")


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _from_deb822(text: str, suite: str) -> Iterator[str]:
    for st in _deb822_stanzas(text):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        if suite in st.get("suites", "").split() and "main" in st.get("components", "").split():
            yield from st.get("uris", "").split()


def _from_one_line(text: str, suite: str) -> Iterator[str]:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=... signed-by=...] options
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "deb" and parts[2] == suite and "main" in parts[3:]:
            yield parts[1]


def apt_mirror(etc_apt: Path = Path("/etc/apt"), suite: str = "bookworm") -> str | None:
    """The first apt source serving ``suite`` ``main`` (deb, not deb-src), in apt's own order:
    ``sources.list``, then ``sources.list.d/*.list`` and ``*.sources`` sorted by name."""
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris = _from_deb822(text, suite) if f.suffix == ".sources" else _from_one_line(text, suite)
        for uri in uris:
            if uri.startswith(_URI_SCHEMES):
                return uri
    return None


if __name__ == "__main__":
    import sys

    found = apt_mirror()
    if found is None:
        print("no apt source for bookworm main in /etc/apt/sources.list{,.d/}", file=sys.stderr)
        sys.exit(1)
    print(found)
