"""Hostile programs: each is contained with its honest verdict, nothing is left running,
and the pool keeps working. Workers run with lowered caps and as PID 1 of their own
namespaces, so a broken sandbox cannot take the machine down with it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import SECRET, Harness, assert_pool_works

from rlfleet.sandbox.records import Verdict

pytestmark = pytest.mark.usefixtures("clean_after")


def py(code: str, **kw: object) -> dict[str, object]:
    return {
        "language": "python",
        "code": code,
        "tests": kw.pop("tests", [{"stdin": "", "stdout": "ok"}]),
        **kw,
    }


def cpp(code: str, **kw: object) -> dict[str, object]:
    return {
        "language": "cpp",
        "code": code,
        "tests": kw.pop("tests", [{"stdin": "", "stdout": "ok"}]),
        **kw,
    }


# ------------------------------------------------------------------------- Python


def test_fork_bomb(sandbox: Harness) -> None:
    r = sandbox.judge(py("import os\nwhile True:\n    os.fork()\n", time_limit_s=1))
    assert r.verdict in (Verdict.RE, Verdict.TLE), r
    assert_pool_works(sandbox)


def test_fork_bomb_that_swallows_errors(sandbox: Harness) -> None:
    code = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    r = sandbox.judge(py(code, time_limit_s=1))
    assert r.verdict is Verdict.TLE, r
    assert_pool_works(sandbox)


def test_memory_bomb(sandbox: Harness) -> None:
    r = sandbox.judge(
        py("x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n", memory_limit_mb=64)
    )
    assert r.verdict is Verdict.MLE, r
    assert r.tests[0].memory_mb >= 60
    assert_pool_works(sandbox)


def test_huge_single_allocation_is_mle(sandbox: Harness) -> None:
    r = sandbox.judge(py("x = [0] * (1 << 40)\n", memory_limit_mb=64))
    assert r.verdict is Verdict.MLE, r


def test_busy_loop(sandbox: Harness) -> None:
    r = sandbox.judge(py("while True:\n    pass\n", time_limit_s=0.5))
    assert r.verdict is Verdict.TLE, r
    assert r.tests[0].time_s >= 0.5


def test_sleep_is_wall_time_tle(sandbox: Harness) -> None:
    r = sandbox.judge(py("import time\ntime.sleep(60)\n", time_limit_s=0.5))
    assert r.verdict is Verdict.TLE, r
    assert r.tests[0].time_s < 0.5  # it used no CPU: the wall clock caught it


def test_network_is_unreachable(sandbox: Harness, listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "print('ok')\n"
    )
    r = sandbox.judge(py(code))
    assert r.verdict is Verdict.RE, r
    assert accepted == []
    # Raw sockets and other families are refused too.
    r = sandbox.judge(
        py("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\nprint('ok')\n")
    )
    assert r.verdict is Verdict.RE, r


def test_host_files_invisible(sandbox: Harness, host_secret_file: Path) -> None:
    code = (
        "import os\n"
        "seen = []\n"
        f"for p in ['{host_secret_file}', '/etc/shadow', '/proc/1/environ', '/work', '/home', '/root', '/sys']:\n"
        "    try:\n"
        "        seen.append(p + ':' + (open(p).read() if os.path.isfile(p) else str(os.listdir(p))))\n"
        "    except OSError as e:\n"
        "        seen.append(p + ':' + type(e).__name__)\n"
        "print('\\n'.join(seen))\n"
    )
    r = sandbox.judge(py(code, tests=[{"stdin": "", "stdout": "x"}]))
    assert r.verdict is Verdict.WA, r  # ran to the end, printed only errors
    assert SECRET not in r.message


def test_proc_shows_the_run_alone(sandbox: Harness) -> None:
    # Toolchains need /proc/self; nothing else of /proc is there, nor the worker (PID 1).
    if sandbox.backend == "runsc":
        # gVisor's proc honours neither hidepid nor subset: the sandbox has no /proc.
        code = "import os\nprint(os.path.exists('/proc'))\n"
        r = sandbox.judge(py(code, tests=[{"stdin": "", "stdout": "False\n"}]))
        assert r.verdict is Verdict.AC, r
        return
    code = (
        "import os\n"
        "print(sorted(os.listdir('/proc')) == sorted([str(os.getpid()), 'self', 'thread-self']))\n"
        "print([p for p in ('/proc/1', '/proc/sys', '/proc/meminfo', '/proc/kcore')"
        " if os.path.exists(p)])\n"
    )
    r = sandbox.judge(py(code, tests=[{"stdin": "", "stdout": "True\n[]\n"}]))
    assert r.verdict is Verdict.AC, r


def test_host_files_not_writable(sandbox: Harness) -> None:
    marker = f"rlfleet-hostile-{os.getpid()}"
    code = (
        "import os\n"
        f"for p in ['/usr/{marker}', '/etc/{marker}', '/{marker}', '/dev/{marker}']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('wrote', p)\n"
        "    except OSError:\n"
        "        pass\n"
        f"open('/tmp/{marker}', 'w').write('private tmp is fine')\n"
        "print('ok')\n"
    )
    r = sandbox.judge(py(code))
    assert r.verdict is Verdict.AC, r
    for p in (f"/usr/{marker}", f"/etc/{marker}", f"/{marker}", f"/tmp/{marker}"):
        assert not Path(p).exists(), p


def test_host_environment_hidden(sandbox: Harness) -> None:
    os.environ["RLFLEET_TEST_SECRET"] = SECRET
    try:
        r = sandbox.judge(py("import os\nprint(sorted(os.environ.items()))\n"))
    finally:
        del os.environ["RLFLEET_TEST_SECRET"]
    assert r.verdict is Verdict.WA
    assert SECRET not in r.message


def test_daemonised_grandchild_is_killed(sandbox: Harness) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(30)\n"
        "    os._exit(0)\n"
        "print('ok')\n"
    )
    r = sandbox.judge(py(code))
    assert r.verdict is Verdict.AC, r
    # clean_after checks that the grandchild is gone.


def test_killing_the_parent(sandbox: Harness) -> None:
    # (Rootless, the worker has the program's uid: signals reach it unless it has no
    # handler for them, as PID 1 of the namespace.)
    code = (
        "import os, signal\n"
        "for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):\n"
        "    for pid in (os.getppid(), 1, -1):\n"
        "        try:\n"
        "            os.kill(pid, sig)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('ok')\n"
    )
    r = sandbox.judge(py(code))
    assert r.verdict is Verdict.AC, r
    assert_pool_works(sandbox)


def test_output_flood(sandbox: Harness) -> None:
    r = sandbox.judge(py("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"))
    assert r.verdict is Verdict.OLE, r
    assert_pool_works(sandbox)


def test_disk_fill(sandbox: Harness) -> None:
    code = (
        "i = 0\n"
        "while True:\n"
        "    with open(f'/tmp/f{i}', 'wb') as f:\n"
        "        f.write(b'x' * (8 << 20))\n"
        "    i += 1\n"
    )
    r = sandbox.judge(py(code, memory_limit_mb=512))
    assert r.verdict in (Verdict.RE, Verdict.MLE), r
    assert_pool_works(sandbox)


def test_thread_bomb(sandbox: Harness) -> None:
    code = (
        "import threading, time\n"
        "while True:\n"
        "    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    )
    r = sandbox.judge(py(code))
    assert r.verdict is Verdict.RE, r
    assert "can't start new thread" in r.message
    assert_pool_works(sandbox)


def test_ignored_signals(sandbox: Harness) -> None:
    code = (
        "import signal\n"
        "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
        "    signal.signal(s, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass\n"
    )
    r = sandbox.judge(py(code, time_limit_s=0.5))
    assert r.verdict is Verdict.TLE, r


def test_escape_syscalls_refused(sandbox: Harness) -> None:
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000), libc.unshare(0x40000000), libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
        "print(os.getuid(), os.geteuid(), os.getgid())\n"
    )
    r = sandbox.judge(py(code, tests=[{"stdin": "", "stdout": "-1 -1 -1\n65534 65534 65534\n"}]))
    assert r.verdict is Verdict.AC, r


# ------------------------------------------------------------------ reward hacks


def call_case(code: str, expected: object = [0, 1]) -> dict[str, object]:
    return {
        "language": "python",
        "fn_name": "solve",
        "code": code,
        "tests": [{"args": [[2, 7, 11, 15], 9], "expected": expected}],
    }


def test_always_equal_object(sandbox: Harness) -> None:
    code = (
        "class Liar(list):\n"
        "    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "def solve(nums, target):\n"
        "    return Liar()\n"
    )
    r = sandbox.judge(call_case(code))
    assert r.verdict in (Verdict.RE, Verdict.WA), r
    assert r.reward == 0.0


def test_patched_serialiser(sandbox: Harness) -> None:
    # Serialisers and builtins patched to claim success: the judge compares out of process.
    code = (
        "import json, builtins\n"
        "json.dumps = lambda *a, **k: 'true'\n"
        "json.JSONEncoder.encode = lambda self, o: '\"AC\"'\n"
        "builtins.type = lambda x: list\n"
        "builtins.isinstance = lambda *a: True\n"
        "def solve(nums, target):\n"
        "    return 'not the answer'\n"
    )
    r = sandbox.judge(call_case(code))
    # Patched builtins may also break the interpreter's own exit (RE): never AC.
    assert r.verdict in (Verdict.WA, Verdict.RE), r
    assert r.reward == 0.0


# Each attack patches one thing a harness could touch once the function has returned, so
# that a wrong return value ([1, 0] or 'wrong') would be reported as the expected [0, 1].
FORGE = (
    "import os\n"
    "_write, _exit = os.write, os._exit\n"
    "def forge(*_args, **_kwargs):\n"
    "    try:\n"
    "        _write(1, b'\\n[0, 1]\\n')\n"
    "    except OSError:\n"
    "        pass\n"
    "    _exit(0)\n"
)
RETURNS_WRONG = "def solve(nums, target):\n    return [1, 0]\n"
RAISES = "def solve(nums, target):\n    raise ValueError('wrong')\n"
FORGED_RESULTS = {
    "JSONEncoder.encode": "import json\n"
    "json.JSONEncoder.encode = lambda self, o: '[0, 1]'\n"
    "def solve(nums, target):\n    return 'wrong'\n",
    "JSONEncoder.iterencode": "import json\n"
    "json.JSONEncoder.iterencode = lambda self, o, _one_shot=False: iter(['[0, 1]'])\n"
    + RETURNS_WRONG,
    "json.encoder.c_make_encoder": "import json.encoder\n"
    "json.encoder.c_make_encoder = lambda *a: (lambda o, level: ['[0, 1]'])\n" + RETURNS_WRONG,
    "json.encoder.encode_basestring_ascii": "import json.encoder\n"
    "json.encoder.encode_basestring_ascii = lambda s: '[0, 1]'\n"
    "def solve(nums, target):\n    return 'wrong'\n",
    # json.dumps itself is bound early: to the harness's globals, or to its functions' defaults.
    "harness globals": "import sys\n"
    "def solve(nums, target):\n"
    "    g = sys._getframe(1).f_globals\n"
    "    for name, value in list(g.items()):\n"
    "        if getattr(value, '__kwdefaults__', None):\n"
    "            value.__kwdefaults__ = dict.fromkeys(value.__kwdefaults__, forge)\n"
    "        if not name.startswith('__'):\n"
    "            g[name] = forge\n"
    "    return [1, 0]\n",
    "os._exit": "os._exit = forge\n" + RETURNS_WRONG,
    "threading._shutdown": "import threading\n"
    "threading._shutdown_locks = {1}\n"
    "threading._shutdown = forge\n" + RETURNS_WRONG,
    "sys.stdout.flush": "import sys\n"
    "class Out:\n"
    "    def write(self, s):\n        return len(s)\n"
    "    flush = staticmethod(forge)\n"
    "sys.stdout = Out()\n" + RETURNS_WRONG,
    "builtins.__import__": "import builtins\n"
    "_import = builtins.__import__\n"
    "def hooked(name, *args, **kwargs):\n"
    "    if name in ('threading', 'traceback'):\n"
    "        forge()\n"
    "    return _import(name, *args, **kwargs)\n"
    "builtins.__import__ = hooked\n" + RETURNS_WRONG,
    "builtins.callable": "import builtins\nbuiltins.callable = forge\n" + RETURNS_WRONG,
    # The error path: a failed call must stay a failure whatever formats its traceback.
    "builtins.type": "import builtins\nbuiltins.type = forge\n" + RAISES,
    "traceback.format_exception": "import traceback\ntraceback.format_exception = forge\n" + RAISES,
    "os.path.dirname": "os.path.dirname = forge\n" + RAISES,
    "exception __str__": "class Wrong(Exception):\n"
    "    __str__ = __repr__ = forge\n"
    "def solve(nums, target):\n    raise Wrong()\n",
    "SystemExit code": "class Code(int):\n"
    "    __bool__ = __and__ = __index__ = forge\n"
    "def solve(nums, target):\n    raise SystemExit(Code(1))\n",
    # What writing and sorting the result would use, were they looked up at run time.
    "os.write": "os.write = lambda fd, data: _write(fd, b'\\n[0, 1]\\n')\n" + RETURNS_WRONG,
    "builtins.sorted": "import builtins\nbuiltins.sorted = lambda items, key=None: [0, 1]\n"
    "def solve(nums, target):\n    return {1, 0, 2}\n",
}


@pytest.mark.parametrize("attack", list(FORGED_RESULTS.values()), ids=list(FORGED_RESULTS))
def test_forged_call_result(sandbox: Harness, attack: str) -> None:
    r = sandbox.judge(call_case(FORGE + attack))
    assert r.verdict is not Verdict.AC, r
    assert r.reward == 0.0


def test_call_results_judged_as_returned(sandbox: Harness) -> None:
    # The control for the attacks above: plain values of every kind still reach the judge.
    values = {
        "set": ("{3, 1, 2}", [1, 2, 3]),
        "frozenset of str": ("frozenset({'b', 'a'})", ["a", "b"]),
        # Sets are listed in the order of their elements' JSON text: "[1, 2]" < "[1]".
        "set of tuples": ("{(2, 1), (1, 2), (1,)}", [[1, 2], [1], [2, 1]]),
        "int keys": ("{2: [1.5, None, True], 1: 'a'}", {"1": "a", "2": [1.5, None, True]}),
        "other keys": ("{None: 0, 2.5: 1, False: 2}", {"null": 0, "2.5": 1, "false": 2}),
        "float": ("0.1 + 0.2", 0.30000000000000004),
        "nested": ("[[1, [2, (3,)]], [], {'k': ({4},)}]", [[1, [2, [3]]], [], {"k": [[4]]}]),
        "none": ("None", None),
        "bools": ("[True, False]", [True, False]),
        "unicode": ("'h\\u00e9\\n'", "h\u00e9\n"),
    }
    code = "VALUES = {\n"
    code += "".join(f"    {kind!r}: {src},\n" for kind, (src, _) in values.items())
    code += "}\ndef solve(kind):\n    return VALUES[kind]\n"
    tests = [{"args": [kind], "expected": want} for kind, (_, want) in values.items()]
    r = sandbox.judge({"language": "python", "fn_name": "solve", "code": code, "tests": tests})
    assert (r.verdict, r.passed) == (Verdict.AC, len(values)), r


def test_stray_file_descriptors(sandbox: Harness) -> None:
    code = (
        "import os\n"
        "for fd in range(3, 1024):\n"
        "    try:\n"
        "        os.write(fd, b'AC [0, 1]\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "def solve(nums, target):\n"
        "    return None\n"
    )
    r = sandbox.judge(call_case(code))
    assert r.verdict is Verdict.WA, r


def test_early_exit(sandbox: Harness) -> None:
    r = sandbox.judge(call_case("import os\nos._exit(0)\n"))
    assert r.verdict is Verdict.WA, r
    r = sandbox.judge(call_case("def solve(nums, target):\n    raise SystemExit(0)\n"))
    assert r.verdict is Verdict.WA, r


def test_expected_output_never_reaches_the_program(sandbox: Harness) -> None:
    marker = "EXPECTED-MARKER-9d1c"
    code = (
        "import gc, sys\n"
        "needle = ''.join(['EXPECTED-', 'MARKER-', '9d1c'])\n"
        "def hits(o):\n"
        "    if isinstance(o, dict):\n"
        "        items = [*o.keys(), *o.values()]\n"
        "    elif isinstance(o, (list, tuple, set, frozenset)):\n"
        "        items = list(o)\n"
        "    else:\n"
        "        return False\n"
        "    return any(x is not needle and isinstance(x, (str, bytes))\n"
        "               and needle in (x if isinstance(x, str) else x.decode('latin-1')) for x in items)\n"
        "found = any(hits(o) for o in gc.get_objects() if o is not globals())\n"
        "print('found' if found else 'clean', file=sys.stderr)\n"
        "print('x')\n"
    )
    r = sandbox.judge(py(code, tests=[{"stdin": "", "stdout": marker}]))
    assert r.verdict is Verdict.WA, r
    assert r.message.strip() == "clean"


# ---------------------------------------------------------------------- test code

# Each attack is added to a wrong solution (half returns x) and must never make the test
# code's run a pass, whether the test is HumanEval's check(candidate) or a unittest method.
HALF_CHECK = (
    "def check(candidate):\n"
    "    assert candidate(1.0) == 0.5\n"
    "    assert abs(candidate(3.0) - 1.5) < 1e-9\n"
    "    assert isinstance(candidate(2.0), float)\n"
    "    assert len(str(candidate(4.0))) == 3\n"
    "\n"
    "check(half)\n"
)
HALF_UNITTEST = (
    "import unittest\n"
    "class TestHalf(unittest.TestCase):\n"
    "    def test_half(self):\n"
    "        self.assertEqual(half(1.0), 0.5)\n"
    "        self.assertAlmostEqual(half(3.0), 1.5)\n"
    "        self.assertTrue(isinstance(half(2.0), float))\n"
)
WRONG_HALF = "def half(x):\n    return x\n"
MARKER = "b'rlfleet: the test code ran to its end\\n'"
TEST_CODE_ATTACKS = {
    # Ending early, before the test code has called anything or during a call.
    "sys.exit at import": "import sys\nsys.exit(0)\n" + WRONG_HALF,
    "sys.exit in the call": "import sys\ndef half(x):\n    sys.exit(0)\n",
    "os._exit at import": "import os\nos._exit(0)\n" + WRONG_HALF,
    "os._exit in the call": "import os\ndef half(x):\n    os._exit(0)\n",
    "SIGKILL to itself": "import os, signal\ndef half(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "signal handler exits 0": "import os, signal, time\n"
    "signal.signal(signal.SIGALRM, lambda *a: os._exit(0))\n"
    "def half(x):\n    signal.setitimer(signal.ITIMER_REAL, 0.01)\n    time.sleep(1)\n",
    "kills the test process": "import os, signal\n"
    "def half(x):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return x\n",
    "kills everything it may": "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + WRONG_HALF,
    # Changing what the test's checks compute.
    # (Patching what the program's own side of the harness uses, isinstance or len, only
    # breaks that side: a runtime error.)
    "patched builtins at import": "import builtins\n"
    "builtins.abs = builtins.round = lambda *a: 0\n"
    "builtins.all = builtins.any = lambda *a: True\n"
    "builtins.AssertionError = type('Quiet', (Exception,), {})\n" + WRONG_HALF,
    "patched builtins in the call": "import builtins\n"
    "def half(x):\n"
    "    builtins.abs = builtins.round = lambda *a: 0\n"
    "    builtins.AssertionError = type('Quiet', (Exception,), {})\n"
    "    return x\n",
    "shadowed builtins": "abs = lambda x: 0\nisinstance = lambda *a: True\n"
    "def len(x):\n    return 3\n" + WRONG_HALF,
    "own check": "def check(candidate):\n    pass\n" + WRONG_HALF,
    "patched unittest": "import unittest\n"
    "unittest.TestCase.assertEqual = lambda *a, **k: None\n"
    "unittest.TestCase.assertAlmostEqual = lambda *a, **k: None\n"
    "unittest.TestCase.run = lambda self, result=None: None\n"
    "unittest.TestResult.wasSuccessful = lambda self: True\n" + WRONG_HALF,
    "every TestCase class found and patched": "import unittest\n"
    "def walk(cls):\n"
    "    for sub in type.__subclasses__(cls):\n"
    "        yield sub\n"
    "        yield from walk(sub)\n"
    "for cls in list(walk(object)):\n"
    "    if cls.__name__ in ('TestCase', 'TestResult'):\n"
    "        for name in list(vars(cls)):\n"
    "            if name.startswith('assert') or name in ('run', 'wasSuccessful'):\n"
    "                setattr(cls, name, lambda *a, **k: True)\n" + WRONG_HALF,
    "replaced sys.modules": "import sys, types\n"
    "fake = types.ModuleType('unittest')\n"
    "class TestCase:\n    pass\n"
    "fake.TestCase = TestCase\n"
    "sys.modules['unittest'] = fake\n"
    "sys.modules['builtins'] = types.ModuleType('builtins')\n" + WRONG_HALF,
    # The output channel and the marker.
    "closed stdout": "import os\nos.close(1)\n" + WRONG_HALF,
    "stdout redirected": "import os, sys\nos.dup2(2, 1)\nsys.stdout = open(os.devnull, 'w')\n"
    + WRONG_HALF,
    "marker printed": f"import os, sys\nprint({MARKER}.decode(), end='')\nsys.stdout.flush()\n"
    f"os.write(1, {MARKER})\nos.write(2, {MARKER})\nos._exit(0)\n",
    "marker on every descriptor": f"import os\nfor fd in range(1024):\n    try:\n"
    f"        os.write(fd, {MARKER})\n    except OSError:\n        pass\nos._exit(0)\n",
    # The test process's stdout, taken from the program's process (pidfd_getfd).
    "stdout taken from the test process": "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "pidfd = libc.syscall(434, os.getppid(), 0)\n"
    "fd = libc.syscall(438, pidfd, 1, 0) if pidfd >= 0 else -1\n"
    "print('pidfd', pidfd, 'fd', fd, 'errno', ctypes.get_errno(), file=sys.stderr)\n"
    f"if fd >= 0:\n    os.write(fd, {MARKER})\n" + WRONG_HALF,
    # Values whose comparisons lie: refused, or turned into what they really hold.
    "always-equal object": "class Liar:\n"
    "    def __eq__(self, other):\n        return True\n"
    "    __lt__ = __ne__ = __eq__\n"
    "    def __sub__(self, other):\n        return self\n"
    "    __abs__ = __bool__ = lambda self: True\n"
    "def half(x):\n    return Liar()\n",
    "lying float": "class F(float):\n"
    "    def __eq__(self, other):\n        return True\n"
    "    def __sub__(self, other):\n        return 0.0\n"
    "    __hash__ = float.__hash__\n"
    "def half(x):\n    return F(x)\n",
    "lying str": "class S(str):\n"
    "    def __eq__(self, other):\n        return True\n"
    "    __hash__ = str.__hash__\n"
    "def half(x):\n    return S('nope')\n",
}


@pytest.mark.parametrize("attack", list(TEST_CODE_ATTACKS.values()), ids=list(TEST_CODE_ATTACKS))
@pytest.mark.parametrize("test_code", [HALF_CHECK, HALF_UNITTEST], ids=["check", "unittest"])
def test_forged_test_code_pass(sandbox: Harness, attack: str, test_code: str) -> None:
    r = sandbox.judge({"language": "python", "code": attack, "tests": [{"test_code": test_code}]})
    assert r.verdict in (Verdict.WA, Verdict.RE), r
    assert r.reward == 0.0


@pytest.mark.parametrize("test_code", [HALF_CHECK, HALF_UNITTEST], ids=["check", "unittest"])
def test_test_code_attack_controls(sandbox: Harness, test_code: str) -> None:
    # The same tests pass a right solution, and fail the wrong one without an attack.
    right = "def half(x):\n    return x / 2\n"
    r = sandbox.judge({"language": "python", "code": right, "tests": [{"test_code": test_code}]})
    assert r.verdict is Verdict.AC, r
    r = sandbox.judge(
        {"language": "python", "code": WRONG_HALF, "tests": [{"test_code": test_code}]}
    )
    assert r.verdict is Verdict.WA, r


def test_test_code_never_reaches_the_program(sandbox: Harness) -> None:
    # The test code holds a value the program would need; it searches its memory (objects,
    # frames, modules) and the descriptor the test code came in on, and reports to stderr.
    code = (
        "import gc, os, sys\n"
        "needle = ''.join(['SECRET-', 'ANSWER-', '5e2a'])\n"
        "def strings(o):\n"
        "    if isinstance(o, dict):\n"
        "        return [*o.keys(), *o.values()]\n"
        "    if isinstance(o, (list, tuple, set, frozenset)):\n"
        "        return list(o)\n"
        "    return [o]\n"
        "def found():\n"
        "    seen = [x for o in gc.get_objects() if o is not globals() for x in strings(o)]\n"
        "    f = sys._getframe()\n"
        "    while f is not None:\n"
        "        seen += list(f.f_locals.values())\n"
        "        f = f.f_back\n"
        "    for v in seen:\n"
        "        if v is needle:\n"
        "            continue\n"
        "        if isinstance(v, (bytes, bytearray)):\n"
        "            v = bytes(v).decode('latin-1')\n"
        "        if isinstance(v, str) and needle in v:\n"
        "            return True\n"
        "    try:\n"
        "        os.lseek(3, 0, 0)\n"
        "        return needle.encode() in os.read(3, 1 << 20)\n"
        "    except OSError:\n"
        "        return False\n"
        "print('found' if found() else 'clean', file=sys.stderr)\n"
        "def answer():\n    return 'wrong'\n"
    )
    test = "assert answer() == 'SECRET-ANSWER-5e2a'\n"
    r = sandbox.judge({"language": "python", "code": code, "tests": [{"test_code": test}]})
    assert r.verdict is Verdict.WA, r
    assert r.message.startswith("clean\n"), r.message


# ---------------------------------------------------------------------------- C++


def test_cpp_fork_bomb(sandbox: Harness) -> None:
    r = sandbox.judge(
        cpp("#include <unistd.h>\nint main() { while (1) fork(); }\n", time_limit_s=1)
    )
    assert r.verdict is Verdict.TLE, r
    assert_pool_works(sandbox)


def test_cpp_memory_bomb(sandbox: Harness) -> None:
    code = (
        "#include <vector>\n#include <cstring>\n#include <cstdlib>\n"
        "int main() { std::vector<char*> v; while (1) { char* p = (char*)malloc(1 << 20);"
        " memset(p, 1, 1 << 20); v.push_back(p); } }\n"
    )
    r = sandbox.judge(cpp(code, memory_limit_mb=64))
    assert r.verdict is Verdict.MLE, r


def test_cpp_busy_loop_and_ignored_signals(sandbox: Harness) -> None:
    code = (
        "#include <csignal>\nint main() { for (int s = 1; s < 32; s++) signal(s, SIG_IGN);"
        " volatile unsigned long x = 0; while (1) x++; }\n"
    )
    r = sandbox.judge(cpp(code, time_limit_s=0.5))
    assert r.verdict is Verdict.TLE, r


def test_cpp_network(sandbox: Harness, listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    code = (
        "#include <sys/socket.h>\n#include <netinet/in.h>\n#include <arpa/inet.h>\n#include <cstdio>\n"
        'int main() { int s = socket(AF_INET, SOCK_STREAM, 0); if (s < 0) { perror("socket"); return 1; }\n'
        f" sockaddr_in a{{}}; a.sin_family = AF_INET; a.sin_port = htons({port});"
        ' inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);\n'
        ' if (connect(s, (sockaddr*)&a, sizeof a) < 0) { perror("connect"); return 1; } puts("ok"); }\n'
    )
    r = sandbox.judge(cpp(code))
    assert r.verdict is Verdict.RE, r
    assert accepted == []


def test_cpp_host_file_and_env(sandbox: Harness, host_secret_file: Path) -> None:
    os.environ["RLFLEET_TEST_SECRET"] = SECRET
    code = (
        "#include <cstdio>\n#include <cstdlib>\n"
        f'int main() {{ FILE* f = fopen("{host_secret_file}", "r"); const char* e = getenv("RLFLEET_TEST_SECRET");\n'
        ' fprintf(stderr, "%s %s\\n", f ? "open" : "closed", e ? e : "noenv"); puts("ok"); }\n'
    )
    try:
        r = sandbox.judge(cpp(code, tests=[{"stdin": "", "stdout": "x"}]))
    finally:
        del os.environ["RLFLEET_TEST_SECRET"]
    assert r.verdict is Verdict.WA, r
    assert r.message.strip() == "closed noenv"


def test_cpp_daemon_and_parent_kill(sandbox: Harness) -> None:
    code = (
        "#include <unistd.h>\n#include <csignal>\n#include <cstdio>\n"
        "int main() { if (fork() == 0) { setsid(); if (fork() == 0) sleep(30); _exit(0); }\n"
        ' kill(getppid(), SIGKILL); kill(-1, SIGKILL); puts("ok"); }\n'
    )
    r = sandbox.judge(cpp(code))
    # kill(-1) reaches the program itself too (it shares its namespace): RE is honest.
    assert r.verdict in (Verdict.AC, Verdict.RE), r
    assert_pool_works(sandbox)


def test_cpp_output_flood(sandbox: Harness) -> None:
    r = sandbox.judge(
        cpp('#include <cstdio>\nint main() { while (1) fputs("xxxxxxxxxxxxxxxx", stdout); }\n')
    )
    assert r.verdict is Verdict.OLE, r


def test_cpp_include_urandom_is_compile_timeout(sandbox: Harness) -> None:
    r = sandbox.judge(cpp('#include "/dev/urandom"\nint main() {}\n'))
    assert r.verdict is Verdict.CE, r
    assert r.message


def test_cpp_include_host_file_does_not_leak(sandbox: Harness, host_secret_file: Path) -> None:
    for path in (host_secret_file, Path("/etc/shadow")):
        r = sandbox.judge(cpp(f'#include "{path}"\nint main() {{}}\n'))
        assert r.verdict is Verdict.CE, r
        assert SECRET not in r.message
        assert "No such file" in r.message


def test_cpp_compile_memory_bomb(sandbox: Harness) -> None:
    # Exponential template instantiation: the compiler itself runs out of time or memory.
    code = (
        "template<int N> struct F { static const long v = F<N-1>::v + F<N-2>::v; char pad[N]; };\n"
        "template<> struct F<0> { static const long v = 0; };\ntemplate<> struct F<1> { static const long v = 1; };\n"
        "#define A(n) F<n> a##n;\n"
        "int main() { return F<100000>::v; }\n"
    )
    r = sandbox.judge(cpp(code))
    assert r.verdict is Verdict.CE, r
    assert_pool_works(sandbox)
