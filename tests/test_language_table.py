"""The language table without a sandbox: Java's names read from the source, the commands'
templates, and every toolchain installed where programs run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlfleet.sandbox.languages import LANGUAGES, SourceError, get_language, java_names

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("code", "file", "main"),
    [
        ("public class Main { public static void main(String[] a) {} }", "Main", "Main"),
        # The class holding main is whichever the source declares; a non-public one too.
        (
            "class Solution {\n  public static void main(String... args) { }\n}",
            "Solution",
            "Solution",
        ),
        (
            "import java.util.*;\nclass Helper { int f() { return 1; } }\n"
            "public class Solver { static public void main(final String[] a) {} }\n",
            "Solver",
            "Solver",
        ),
        # The file is named after the public class; main sits in another top-level class.
        (
            "public class Shown { }\nclass Runner { public static void main(String[] a) {} }",
            "Shown",
            "Runner",
        ),
        # Comments, strings and nested classes do not confuse it.
        (
            "// class Fake { public static void main(String[] a) {} }\n/* class X { */\n"
            "public class Real { static String s = \"class Nope {\"; char c = '{';\n"
            "  static class Inner { void g() { } }\n"
            "  public static void main(String[] a) { Object o = String.class; } }\n",
            "Real",
            "Real",
        ),
        (
            "public class Outer { static class In { public static void main(String[] a) {} } }",
            "Outer",
            "Outer$In",
        ),
        (
            "package a.b;\nfinal public class P { public static void main(String[] a) {} }",
            "P",
            "a.b.P",
        ),
        # Several mains: the public class's.
        (
            "class A { public static void main(String[] a) {} }\n"
            "public class B { public static void main(String[] a) {} }",
            "B",
            "B",
        ),
    ],
)
def test_java_names(code: str, file: str, main: str) -> None:
    assert java_names(code) == {"file": file, "main": main}


@pytest.mark.parametrize(
    "code",
    [
        "public class Main { }",
        "public class Main { void main(String[] a) {} }",
        "// public static void main(String[] a)\nclass M { }",
        "",
    ],
)
def test_java_without_main_is_a_source_error(code: str) -> None:
    with pytest.raises(SourceError, match="main"):
        java_names(code)


def test_commands_fill_their_templates() -> None:
    java = LANGUAGES["java"]
    code = "class Sol { public static void main(String[] a) {} }"
    path, build = java.compile_command(code)
    assert path == "/tmp/Sol.java"
    assert build.argv[-2:] == ("Sol", "Sol")
    run = java.run_command(code, 256)
    assert "-Xmx208m" in run.argv
    assert java.run_command(code, 64).argv.count("-Xmx32m") == 1  # never under half the limit
    go = LANGUAGES["go"]
    assert ("GOMEMLIMIT", "240MiB") in go.run_command("", 256).env
    assert LANGUAGES["rust"].run_command("", 256).argv == ("/tmp/main",)


def test_aliases() -> None:
    names = {a: get_language(a) for a in ("js", "node", "golang", "rs", "Java", " RUST ")}
    assert {k: v.name if v else None for k, v in names.items()} == {
        "js": "javascript",
        "node": "javascript",
        "golang": "go",
        "rs": "rust",
        "Java": "java",
        " RUST ": "rust",
    }


def test_every_toolchain_is_installed_where_programs_run() -> None:
    setup = (ROOT / "deploy/host/setup.sh").read_text()
    listed = re.search(r"LANGUAGE_PACKAGES=\(([^)]*)\)", setup)
    assert listed is not None
    on_host = set(listed.group(1).split()) | {"python3"}  # setup.sh itself runs on python3
    in_image = set(re.findall(r"[\w.+-]+", (ROOT / "sandbox/Dockerfile").read_text()))
    for lang in LANGUAGES.values():
        assert lang.packages and lang.probe, lang.name
        assert set(lang.packages) <= on_host, lang.name
        assert set(lang.packages) <= in_image, lang.name


def _toolchain_layer(dockerfile: Path) -> str:
    """The one instruction that installs the toolchains, continuation lines joined."""
    lines = [x for x in dockerfile.read_text().splitlines() if not x.startswith("#")]
    instructions = "\n".join(lines).replace("\\\n", " ").splitlines()
    found = [x for x in instructions if "default-jdk-headless" in x]
    assert len(found) == 1, dockerfile
    return found[0]


def test_server_image_shares_the_sandbox_images_toolchain_layer() -> None:
    # The same instruction on the same base: built once, cached for the other image.
    sandbox = _toolchain_layer(ROOT / "sandbox/Dockerfile")
    server = _toolchain_layer(ROOT / "deploy/server/Dockerfile")
    assert sandbox == server
