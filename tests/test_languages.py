"""Java, JavaScript, Go and Rust: every verdict, the runtimes' memory honest, and the hostile
basics contained, on both backends. One small program per language and behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import SECRET, Harness, assert_pool_works

from rlfleet.sandbox.records import Verdict

pytestmark = pytest.mark.usefixtures("clean_after")

LANGUAGES = ("java", "javascript", "go", "rust")


def java(body: str, imports: str = "") -> str:
    return f"{imports}public class Main {{ public static void main(String[] a) throws Exception {{ {body} }} }}\n"


def go(body: str, imports: str = '"fmt"') -> str:
    return f"package main\nimport ({imports})\nfunc main() {{ {body} }}\n"


SUM = {
    "java": "import java.util.*;\nclass Solution { public static void main(String[] a) {"
    " Scanner s = new Scanner(System.in); System.out.println(s.nextLong() + s.nextLong()); } }\n",
    "javascript": "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/)"
    ".map(Number);\nconsole.log(a + b);\n",
    "go": go("var a, b int64\nfmt.Scan(&a, &b)\nfmt.Println(a + b)"),
    "rust": "use std::io::Read;\nfn main() { let mut s = String::new();"
    " std::io::stdin().read_to_string(&mut s).unwrap();"
    " let v: Vec<i64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();"
    ' println!("{}", v[0] + v[1]); }\n',
}
BUSY_LOOP = {
    "java": java("long x = 0; while (true) x += System.nanoTime() & 1;"),
    "javascript": "let x = 0;\nwhile (true) x++;\n",
    "go": go("x := 0\nfor { x++ }", ""),
    "rust": "fn main() { let mut x = 0u64; loop { x = x.wrapping_add(1);"
    " unsafe { std::ptr::read_volatile(&x); } } }\n",
}
# Memory bombs: 1 MiB blocks, touched, kept.
MEMORY_BOMB = {
    "java": java(
        "List<byte[]> v = new ArrayList<>(); while (true) { byte[] b = new byte[1 << 20];"
        " Arrays.fill(b, (byte) 1); v.add(b); }",
        "import java.util.*;\n",
    ),
    "javascript": "const v = [];\nwhile (true) v.push(new Array(1 << 17).fill(1.5));\n",
    "go": go(
        "var v [][]byte\nfor { b := make([]byte, 1<<20)\nfor i := range b { b[i] = 1 }\nv = append(v, b) }",
        "",
    ),
    "rust": "fn main() { let mut v = Vec::new(); loop { v.push(vec![1u8; 1 << 20]); } }\n",
}
# 30 MiB kept and 768 MiB of garbage in 4 MiB blocks, under a 96 MiB limit: a runtime that
# grows its heap by its defaults (sized for the host) rather than the limit is OOM-killed.
CHURN = {
    "java": java(
        "int[] keep = new int[30 << 18]; long s = 0; for (int i = 0; i < 192; i++) {"
        " int[] g = new int[1 << 20]; g[i] = i; s += g[i] + g[(i * 7) & 1023]; keep[i] = g[i]; }"
        ' System.out.println(s > 0 ? "ok" : "no");'
    ),
    "javascript": "const keep = new Float64Array(30 << 17).fill(1);\nlet s = 0;\n"
    "for (let i = 0; i < 192; i++) { const g = new Array(1 << 19).fill(i); s += g[7]; }\n"
    "console.log(s > 0 && keep[5] === 1 ? 'ok' : 'no');\n",
    "go": go(
        "keep := make([]byte, 30<<20)\nfor i := range keep { keep[i] = 1 }\ns := 0\n"
        "for i := 0; i < 192; i++ { g := make([]byte, 4<<20)\nfor j := 0; j < len(g); j += 4096 { g[j] = byte(i) }\n"
        's += int(g[4096]) }\nif s > 0 && keep[5] == 1 { fmt.Println("ok") }'
    ),
    "rust": "fn main() { let keep = vec![1u8; 30 << 20]; let mut s = 0u64;"
    " for i in 0..192u64 { let g = vec![i as u8; 4 << 20]; s += g[4096] as u64; }"
    ' if s > 0 && keep[5] == 1 { println!("ok"); } }\n',
}
RUNTIME_ERROR = {
    "java": java("int[] x = new int[1]; System.out.println(x[a.length + 3]);"),
    "javascript": "null.field;\n",
    "go": go('var m map[string]int\nm["x"] = 1\nfmt.Println(m)'),
    "rust": 'fn main() { let v: Vec<u8> = Vec::new(); println!("{}", v[3]); }\n',
}
COMPILE_ERROR = {
    "java": java("int x = undefinedName;"),
    "javascript": "function f( {\n",
    "go": go("fmt.Println(undefinedName)"),
    "rust": "fn main() { let x: u8 = undefined_name; }\n",
}
# Start processes until refused, and keep trying.
FORK_BOMB = {
    "java": java(
        'while (true) { try { new ProcessBuilder("/bin/sleep", "60").start(); }'
        " catch (Exception e) { } }"
    ),
    "javascript": "const cp = require('child_process');\n"
    "while (true) { try { cp.spawn('/bin/sleep', ['60']).on('error', () => {}); } catch (e) {} }\n",
    "go": go('for { exec.Command("/bin/sleep", "60").Start() }', '"os/exec"'),
    "rust": 'fn main() { loop { let _ = std::process::Command::new("/bin/sleep").arg("60").spawn(); } }\n',
}
OUTPUT_FLOOD = {
    "java": java('String s = "x".repeat(4096); while (true) System.out.print(s);'),
    "javascript": "const s = 'x'.repeat(1 << 16);\nwhile (true) process.stdout.write(s);\n",
    "go": go('s := strings.Repeat("x", 4096)\nfor { os.Stdout.WriteString(s) }', '"os"; "strings"'),
    "rust": "use std::io::Write;\nfn main() { let s = [b'x'; 4096]; let mut o = std::io::stdout();"
    " loop { o.write_all(&s).unwrap(); } }\n",
}


def connect(port: int) -> dict[str, str]:
    """Programs that connect to 127.0.0.1:port and print ok."""
    return {
        "java": java(f'new java.net.Socket("127.0.0.1", {port}); System.out.println("ok");'),
        "javascript": f"require('net').connect({port}, '127.0.0.1', () => console.log('ok'));\n",
        "go": go(
            f'c, err := net.Dial("tcp", "127.0.0.1:{port}")\nif err != nil {{ panic(err) }}\n'
            'fmt.Println("ok", c)',
            '"fmt"; "net"',
        ),
        "rust": f'fn main() {{ std::net::TcpStream::connect("127.0.0.1:{port}").unwrap(); println!("ok"); }}\n',
    }


def peek(path: Path) -> dict[str, str]:
    """Programs that print to stderr whether `path` opened and the secret variable."""
    return {
        "java": java(
            f'String e = System.getenv("RLFLEET_TEST_SECRET"); String f;'
            f' try {{ f = new String(java.nio.file.Files.readAllBytes(java.nio.file.Path.of("{path}"))); }}'
            ' catch (Exception x) { f = "closed"; }'
            ' System.err.println(f + " " + (e == null ? "noenv" : e)); System.out.println("ok");'
        ),
        "javascript": f"let f;\ntry {{ f = require('fs').readFileSync('{path}', 'utf8'); }}"
        " catch (e) { f = 'closed'; }\n"
        "console.error(f + ' ' + (process.env.RLFLEET_TEST_SECRET || 'noenv'));\nconsole.log('ok');\n",
        "go": go(
            f'f, err := os.ReadFile("{path}")\ns := string(f)\nif err != nil {{ s = "closed" }}\n'
            'e := os.Getenv("RLFLEET_TEST_SECRET")\nif e == "" { e = "noenv" }\n'
            'fmt.Fprintln(os.Stderr, s, e)\nfmt.Println("ok")',
            '"fmt"; "os"',
        ),
        "rust": f'fn main() {{ let f = std::fs::read_to_string("{path}").unwrap_or("closed".into());'
        ' let e = std::env::var("RLFLEET_TEST_SECRET").unwrap_or("noenv".into());'
        ' eprintln!("{} {}", f, e); println!("ok"); }\n',
    }


def case(language: str, code: str, **kw: object) -> dict[str, object]:
    return {
        "language": language,
        "code": code,
        "tests": kw.pop("tests", [{"stdin": "", "stdout": "ok"}]),
        **kw,
    }


parametrize = pytest.mark.parametrize("language", LANGUAGES)


# ------------------------------------------------------------------------- verdicts


@parametrize
def test_ac_and_wa(sandbox: Harness, language: str) -> None:
    tests = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 5\n", "stdout": "11\n"}]
    r = sandbox.judge(case(language, SUM[language], tests=tests))
    assert (r.verdict, r.passed, r.total) == (Verdict.WA, 1, 2), r
    assert [t.verdict for t in r.tests] == [Verdict.AC, Verdict.WA]
    assert 0 < r.tests[0].time_s < 1


@parametrize
def test_memory_churn_under_the_limit_is_ac(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, CHURN[language], memory_limit_mb=96, time_limit_s=5))
    assert r.verdict is Verdict.AC, r
    assert r.tests[0].memory_mb < 96


@parametrize
def test_busy_loop_is_tle(sandbox: Harness, language: str) -> None:
    # A second: a runtime's start (a JVM's, about 0.2 s of CPU) is part of the budget.
    r = sandbox.judge(case(language, BUSY_LOOP[language], time_limit_s=1))
    assert r.verdict is Verdict.TLE, r
    assert r.tests[0].time_s >= 1


@parametrize
def test_memory_bomb_is_mle(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, MEMORY_BOMB[language], memory_limit_mb=64, time_limit_s=5))
    assert r.verdict is Verdict.MLE, r
    assert_pool_works(sandbox)


@parametrize
def test_runtime_error(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, RUNTIME_ERROR[language]))
    assert r.verdict is Verdict.RE, r
    assert r.message


@parametrize
def test_compile_error(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, COMPILE_ERROR[language]))
    assert r.verdict is Verdict.CE, r
    assert "undefined" in r.message.lower() or "SyntaxError" in r.message, r.message


# ------------------------------------------------------------------------- hostile


@parametrize
def test_fork_bomb(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, FORK_BOMB[language], time_limit_s=1))
    assert r.verdict in (Verdict.TLE, Verdict.RE), r
    assert_pool_works(sandbox)


@parametrize
def test_network(sandbox: Harness, language: str, listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    r = sandbox.judge(case(language, connect(port)[language]))
    assert r.verdict is Verdict.RE, r
    assert accepted == []


@parametrize
def test_host_file_and_env(
    sandbox: Harness, language: str, host_secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLFLEET_TEST_SECRET", SECRET)
    r = sandbox.judge(case(language, peek(host_secret_file)[language], tests=[{"stdout": "x"}]))
    assert r.verdict is Verdict.WA, r  # ran to its end, and saw neither
    assert r.message.strip() == "closed noenv"


@parametrize
def test_output_flood(sandbox: Harness, language: str) -> None:
    r = sandbox.judge(case(language, OUTPUT_FLOOD[language]))
    assert r.verdict is Verdict.OLE, r


def test_java_thread_bomb_is_not_memory(sandbox: Harness) -> None:
    # The JVM reports a thread it cannot start (the pids limit) as an OutOfMemoryError.
    code = java(
        "while (true) { Thread t = new Thread(() -> { try { Thread.sleep(60000); }"
        " catch (InterruptedException e) { } }); t.setDaemon(true); t.start(); }"
    )
    r = sandbox.judge(case("java", code))
    assert r.verdict is Verdict.RE, r
    assert "unable to create native thread" in r.message, r.message
    assert_pool_works(sandbox)
