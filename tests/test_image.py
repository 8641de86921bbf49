"""The sandbox image: its content-hash tag, apt mirror discovery, and (docker) the image itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rlfleet.sandbox import image
from rlfleet.sandbox.apt_mirror import apt_mirror
from rlfleet.sandbox.image import image_tag

# Placeholder hosts only (.invalid never resolves): no real mirror is named in the repo.
DEB822 = """\
Types: deb
# a comment
URIs: http://main.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.invalid/debian-security
Suites: bookworm-security
Components: main
"""


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_mirror_from_deb822(tmp_path: Path) -> None:
    etc = _etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert apt_mirror(etc) == "http://main.invalid/debian"


def test_mirror_skips_security_disabled_src_and_other_suites(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list.d/a.sources": (
                "Types: deb\nURIs: http://sec.invalid/ds\nSuites: bookworm-security\n"
                "Components: main\n\n"
                "Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\n"
                "Components: main\n\n"
                "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n"
                "Components: main\n\n"
                "Types: deb\nURIs: https://node.invalid/x\nSuites: nodistro\nComponents: main\n"
            ),
            "sources.list.d/b.sources.disabled": DEB822,
            "sources.list.d/c.sources": (
                "Types: deb\nURIs: https://ok.invalid/debian\nSuites: bullseye bookworm\n"
                "Components: contrib main\n"
            ),
        },
    )
    assert apt_mirror(etc) == "https://ok.invalid/debian"


def test_mirror_from_one_line_sources_list_first(tmp_path: Path) -> None:
    etc = _etc(
        tmp_path,
        {
            "sources.list": (
                "# deb http://commented.invalid/debian bookworm main\n"
                "deb-src http://src.invalid/debian bookworm main\n"
                "deb http://sec.invalid/debian-security bookworm-security main\n"
                "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main contrib\n"
            ),
            "sources.list.d/debian.sources": DEB822,
        },
    )
    assert apt_mirror(etc) == "http://one.invalid/debian"


def test_no_mirror(tmp_path: Path) -> None:
    assert apt_mirror(tmp_path) is None
    etc = _etc(tmp_path, {"sources.list": "deb http://x.invalid/debian bullseye main\n"})
    assert apt_mirror(etc) is None


def test_tag_hashes_dockerfile_and_worker(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    (root / "worker").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "worker" / "zygote.py").write_text("print(1)\n")
    tag = image_tag(root)
    assert tag.startswith("rlfleet/sandbox:") and len(tag.split(":")[1]) == 16
    assert image_tag(root) == tag

    # Bytecode caches are not built into the image (.dockerignore): the tag ignores them.
    (root / "worker" / "__pycache__").mkdir()
    (root / "worker" / "__pycache__" / "zygote.cpython-311.pyc").write_bytes(b"\0")
    assert image_tag(root) == tag

    (root / "worker" / "zygote.py").write_text("print(2)\n")
    changed = image_tag(root)
    assert changed != tag

    (root / "worker" / "sub").mkdir()
    (root / "worker" / "sub" / "helper.py").write_text("")
    added = image_tag(root)
    assert added not in (tag, changed)

    (root / "worker" / "sub" / "helper.py").rename(root / "worker" / "sub" / "other.py")
    assert image_tag(root) != added

    (root / "Dockerfile").write_text("FROM scratch\nCOPY worker/ /w/\n")
    assert image_tag(root) != added


def test_tag_matches_this_checkout(tmp_path: Path) -> None:
    copy = tmp_path / "sandbox"
    copy.mkdir()
    shutil.copy(image.SANDBOX_DIR / "Dockerfile", copy)
    shutil.copy(image.SANDBOX_DIR / ".dockerignore", copy)
    shutil.copytree(
        image.SANDBOX_DIR / "worker", copy / "worker", ignore=shutil.ignore_patterns("__pycache__")
    )
    assert image_tag(copy) == image_tag()


@pytest.mark.docker
def test_sandbox_image_runs_python_and_gxx_without_network() -> None:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:
        pytest.fail(f"no Docker engine answers ({e}): run deploy/host/setup.sh as root")

    lines: list[str] = []
    tag = image.ensure_image(client, progress=lines.append)
    assert tag == image_tag()
    client.images.get(tag)  # raises ImageNotFound if ensure_image lied

    def run(*cmd: str) -> str:
        out = client.containers.run(
            tag, list(cmd), network_mode="none", remove=True, stdout=True, stderr=True
        )
        return bytes(out).decode()

    def py(code: str) -> str:
        return run("/usr/bin/python3", "-c", code)

    assert py("print(1)") == "1\n"
    assert "g++" in run("g++", "--version")
    assert py("import os; print(os.path.isfile('/opt/rlfleet/worker/zygote.py'))") == "True\n"
    # --network none: only loopback
    assert py("import socket; print(sorted(n for _, n in socket.if_nameindex()))") == "['lo']\n"
