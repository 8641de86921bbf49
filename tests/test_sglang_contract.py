"""The sglang engine and its HTTP fake, held to the pinned SGLang wheel's own source.

Downloads ``sglang==<pin in pyproject's [sglang] extra>`` without dependencies (cached under
the repository's ignored ``.state/``) and reads its source with ``ast``, never importing it:

- every route the adapter and the fake use is registered in ``srt/entrypoints/http_server.py``
  with that method, and parses its body into the request class the fake models;
- every body field the adapter sends (recorded by the fake from the adapter's own calls) is a
  field of that class in ``srt/managers/io_struct.py`` (or of ``/generate``'s JSON contract in
  ``api/v1/api_types.py``) and the value sent fits the field's annotation; the fake requires
  exactly the fields without a default;
- the stream framing, ``meta_info`` keys and weight-version spans the adapter reads appear
  where SGLang builds them;
- the launch flags the adapter passes are fields of the server's arguments, and
  ``--smg-grpc-mode`` still dispatches to the smg-grpc-servicer server;
- smg-grpc-proto's generated service has the methods and fields the adapter calls.

No download is a failure, not a skip: CI must run this check.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from sglang_fakes import GENERATE_FIELDS, ROUTE_FIELDS, SAMPLING_FIELDS, FakeHttpSglang

from rlfleet.rollout.records import SamplingParams
from rlfleet.rollout.sglang_engine import SglangEngineConfig, http_sampling_params, launch_argv
from rlfleet.rollout.sglang_grpc import generate_request_pb
from rlfleet.rollout.sglang_http import SglangHttp

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".state" / "sglang-wheel"

pytestmark = pytest.mark.timeout(600)


def pinned_version() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for req in extras["sglang"]:
        m = re.fullmatch(r"sglang==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(1)
    raise AssertionError("pyproject's [sglang] extra pins no sglang==X")


@pytest.fixture(scope="module")
def wheel() -> Iterator[zipfile.ZipFile]:
    version = pinned_version()
    found = sorted(CACHE.glob(f"sglang-{version}-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        # The wheel's Python source is what is read: ask for one fixed build, so that any
        # CI host (another glibc, Python or architecture) downloads the same file.
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", f"sglang=={version}",
            "--only-binary=:all:", "--python-version", "3.11",
            "--platform", "manylinux_2_34_x86_64", "-d", str(CACHE),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
        found = sorted(CACHE.glob(f"sglang-{version}-*.whl"))
        if proc.returncode != 0 or not found:
            pytest.fail(
                f"could not download the pinned SGLang wheel (sglang=={version}) to check the "
                f"fakes against: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}"
            )
    with zipfile.ZipFile(found[-1]) as zf:
        yield zf


def source(wheel: zipfile.ZipFile, path: str) -> ast.Module:
    return ast.parse(wheel.read(path).decode(), path)


def classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in module.body if isinstance(n, ast.ClassDef)}


def aliases(module: ast.Module) -> dict[str, ast.expr]:
    """Module-level type aliases (``StringOrList = Union[str, StringList]``)."""
    out: dict[str, ast.expr] = {}
    for n in module.body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            out[n.targets[0].id] = n.value
    return out


def fields(
    cls: ast.ClassDef, all_classes: dict[str, ast.ClassDef]
) -> dict[str, tuple[ast.expr, bool]]:
    """Annotated fields (with those of base classes in the same module): annotation and
    whether the field has a default."""
    out: dict[str, tuple[ast.expr, bool]] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in all_classes:
            out.update(fields(all_classes[base.id], all_classes))
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            out[n.target.id] = (n.annotation, n.value is not None)
    return out


SIMPLE: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "bytes": bytes,
}


def fits(value: Any, ann: ast.expr, alias: dict[str, ast.expr]) -> bool:
    """Whether a JSON value fits a typing annotation (as pydantic / msgspec would take it)."""
    if isinstance(ann, ast.Constant) and ann.value is None:
        return value is None
    if isinstance(ann, ast.Name):
        if ann.id in SIMPLE:
            if ann.id == "bytes":  # JSON carries bytes as base64 strings
                return isinstance(value, str)
            return isinstance(value, SIMPLE[ann.id]) and not (
                ann.id in ("int", "float") and isinstance(value, bool)
            )
        if ann.id == "Any":
            return True
        if ann.id in alias:
            return fits(value, alias[ann.id], alias)
        raise AssertionError(f"cannot check a value against {ann.id}")
    if isinstance(ann, ast.Subscript):
        head = ast.unparse(ann.value)
        args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if head == "Optional":
            return value is None or fits(value, args[0], alias)
        if head == "Union":
            return any(fits(value, a, alias) for a in args)
        if head in ("List", "list"):
            return isinstance(value, list) and all(fits(v, args[0], alias) for v in value)
        if head in ("Dict", "dict"):
            return isinstance(value, dict) and all(fits(v, args[1], alias) for v in value.values())
        if head == "Literal":
            return value in [a.value for a in args if isinstance(a, ast.Constant)]
        if head == "Annotated":
            return fits(value, args[0], alias)
    raise AssertionError(f"cannot check a value against {ast.unparse(ann)}")


async def adapter_calls(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every control call the adapter's HTTP client makes, as the fake recorded it."""
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "model.safetensors").write_bytes(b"")
    fake = FakeHttpSglang().start()
    try:
        http = SglangHttp("127.0.0.1", fake.port, timeout_s=10)
        await http.pause_generation("retract")
        await http.update_weights_from_disk(model_path=str(staged), weight_version="1")
        await http.begin_weight_update()
        await http.update_weights_from_tensor(
            serialized_named_tensors=["AAAA"], weight_version="2", load_format="flattened_bucket"
        )
        await http.init_weights_update_group(
            master_address="127.0.0.1", master_port=29500, rank_offset=1, world_size=2,
            group_name="weight_update_group",
        )  # fmt: skip
        await http.update_weights_from_distributed(
            names=["w"], dtypes=["bfloat16"], shapes=[[2, 3]], group_name="weight_update_group",
            weight_version="3",
        )  # fmt: skip
        await http.end_weight_update()
        await http.continue_generation()
        await http.abort_request("r#0")
        return list(fake.calls)
    finally:
        fake.stop()


def routes(module: ast.Module) -> dict[tuple[str, str], ast.AsyncFunctionDef]:
    """(path, METHOD) of every ``@app.get/post/api_route`` handler."""
    out: dict[tuple[str, str], ast.AsyncFunctionDef] = {}
    for n in ast.walk(module):
        if not isinstance(n, ast.AsyncFunctionDef):
            continue
        for dec in n.decorator_list:
            if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
                continue
            if ast.unparse(dec.func.value) != "app" or not dec.args:
                continue
            path = dec.args[0]
            if not (isinstance(path, ast.Constant) and isinstance(path.value, str)):
                continue
            kind = dec.func.attr
            methods = [kind.upper()] if kind in ("get", "post", "put") else []
            for kw in dec.keywords:
                if kw.arg == "methods" and isinstance(kw.value, ast.List):
                    methods += [str(e.value) for e in kw.value.elts if isinstance(e, ast.Constant)]
            for m in methods:
                out[(path.value, m)] = n
    return out


def body_class(handler: ast.AsyncFunctionDef) -> str:
    """The request class FastAPI parses the handler's ``obj`` body into."""
    for arg in handler.args.args:
        if arg.arg == "obj" and arg.annotation is not None:
            ann = arg.annotation
            if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated":
                ann = ann.slice.elts[0] if isinstance(ann.slice, ast.Tuple) else ann.slice
            return ast.unparse(ann)
    return ""


def string_constants(module: ast.Module) -> set[str | bytes]:
    return {
        n.value
        for n in ast.walk(module)
        if isinstance(n, ast.Constant) and isinstance(n.value, str | bytes)
    }


# -- the checks ---------------------------------------------------------------------------------


def test_routes_exist_with_the_fakes_request_classes(wheel: zipfile.ZipFile) -> None:
    registered = routes(source(wheel, "sglang/srt/entrypoints/http_server.py"))
    used = {
        ("/generate", "POST"),
        ("/health", "GET"),
        ("/model_info", "GET"),
        ("/flush_cache", "POST"),
    }
    used |= {(route, "POST") for route in ROUTE_FIELDS}
    missing = sorted(used - set(registered))
    assert not missing, (
        f"routes the adapter or the fake use that SGLang does not register: {missing}"
    )
    for route, (cls, _, _) in ROUTE_FIELDS.items():
        assert body_class(registered[(route, "POST")]) == cls, route
    assert body_class(registered[("/generate", "POST")]) == "GenerateReqInput"


async def test_adapter_bodies_fit_the_request_classes(
    wheel: zipfile.ZipFile, tmp_path: Path
) -> None:
    io_struct = source(wheel, "sglang/srt/managers/io_struct.py")
    all_classes = classes(io_struct)
    alias = aliases(io_struct)
    calls = await adapter_calls(tmp_path)
    assert {route for route, _ in calls} == set(ROUTE_FIELDS), "the check must see every route"
    for route, body in calls:
        cls, required, optional = ROUTE_FIELDS[route]
        declared = fields(all_classes[cls], all_classes)
        unknown = sorted(set(required | optional) - set(declared))
        assert not unknown, f"{route}: the fake takes fields {cls} does not have: {unknown}"
        without_default = {name for name, (_, has_default) in declared.items() if not has_default}
        assert without_default == required, f"{route}: {cls} requires {sorted(without_default)}"
        for name, value in body.items():
            ann = declared[name][0]
            assert fits(value, ann, alias), (
                f"{route}: {name}={value!r} does not fit {ast.unparse(ann)}"
            )
    pause_mode = fields(all_classes["PauseGenerationReqInput"], all_classes)["mode"][0]
    assert fits("retract", pause_mode, alias)


def test_generate_body_fits_the_json_contract(wheel: zipfile.ZipFile) -> None:
    io_struct = source(wheel, "sglang/srt/managers/io_struct.py")
    api = source(wheel, "sglang/api/v1/api_types.py")
    api_classes, api_alias = classes(api), aliases(api)
    request = fields(api_classes["GenerateRequest"], api_classes)
    sampling = fields(api_classes["SamplingParams"], api_classes)
    dataclass_fields = fields(classes(io_struct)["GenerateReqInput"], classes(io_struct))
    assert set(request) >= GENERATE_FIELDS and set(dataclass_fields) >= GENERATE_FIELDS
    assert set(sampling) >= SAMPLING_FIELDS, sorted(SAMPLING_FIELDS - set(sampling))
    params = SamplingParams(
        max_new_tokens=4,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        stop=("x",),
        stop_token_ids=(2,),
        seed=3,
    )
    sent = http_sampling_params(params, seed=3)
    assert set(sent) <= SAMPLING_FIELDS
    for name, value in sent.items():
        assert fits(value, sampling[name][0], api_alias), f"sampling_params.{name}={value!r}"
    body = {"rid": "k#0", "input_ids": [1, 2], "return_logprob": True, "stream": True}
    for name, value in body.items():
        assert fits(value, request[name][0], api_alias), f"{name}={value!r}"
    # Unknown sampling keys are refused (the fake refuses them too).
    assert "unknown keys rejected" in (ast.get_docstring(api_classes["SamplingParams"]) or "")


def test_stream_and_meta_info_as_the_adapter_reads_them(wheel: zipfile.ZipFile) -> None:
    http_consts = string_constants(source(wheel, "sglang/srt/entrypoints/http_server.py"))
    assert b"data: [DONE]\n\n" in http_consts and b"data: " in http_consts
    assert "weight_version" in http_consts  # /model_info
    tm = string_constants(source(wheel, "sglang/srt/managers/tokenizer_manager.py"))
    assert {
        "output_ids",
        "meta_info",
        "finish_reason",
        "weight_version",
        "output_token_logprobs",
    } <= tm
    wv = source(wheel, "sglang/srt/utils/weight_versions.py")
    assert {"weight_versions", "version", "start", "end"} <= string_constants(wv)
    span = fields(classes(wv)["WeightVersionSpan"], classes(wv))
    assert {k: ast.unparse(v[0]) for k, v in span.items()} == {
        "version": "str",
        "start": "int",
        "end": "int",
    }


def test_launch_flags_are_server_arguments(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    names: set[str] = set()
    for path in wheel.namelist():
        if path.startswith("sglang/srt/arg_groups/fields/") and path.endswith(".py"):
            for cls in classes(source(wheel, path)).values():
                names |= {
                    n.target.id
                    for n in cls.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                }
    flags: set[str] = set()
    surface: Literal["grpc", "http"]
    for surface in ("grpc", "http"):
        config = SglangEngineConfig(model_dir=tmp_path, surface=surface)
        argv = launch_argv(config, 30000, 40000)
        flags |= {a for a in argv if a.startswith("--")}
    # The CLI spells each field ``--`` + name with dashes (arg_utils).
    missing = sorted(f for f in flags if f[2:].replace("-", "_") not in names)
    assert not missing, f"flags the adapter passes that SGLang does not define: {missing}"
    launch = wheel.read("sglang/launch_server.py").decode()
    assert "cfg.smg_grpc_mode" in launch and "serve_grpc" in launch
    grpc_server = wheel.read("sglang/srt/entrypoints/grpc_server.py").decode()
    assert "smg_grpc_servicer.sglang.server" in grpc_server
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    assert re.search(r"^Requires-Dist: smg-grpc-servicer", wheel.read(meta).decode(), re.M)


def test_grpc_service_has_what_the_adapter_calls() -> None:
    from smg_grpc_proto.generated import sglang_scheduler_pb2

    service = sglang_scheduler_pb2.DESCRIPTOR.services_by_name["SglangScheduler"]
    assert service.full_name == "sglang.grpc.scheduler.SglangScheduler"
    methods = service.methods_by_name
    for name in ("Generate", "Abort", "HealthCheck", "GetLoads", "FlushCache"):
        assert name in methods, name
    assert methods["Generate"].server_streaming and not methods["Generate"].client_streaming
    out = sglang_scheduler_pb2.GenerateResponse.DESCRIPTOR
    assert {f.name for f in out.oneofs_by_name["response"].fields} == {"chunk", "complete"}
    chunk = sglang_scheduler_pb2.GenerateStreamChunk.DESCRIPTOR.fields_by_name
    assert {"token_ids", "output_logprobs"} <= set(chunk)
    assert {"finish_reason"} <= set(sglang_scheduler_pb2.GenerateComplete.DESCRIPTOR.fields_by_name)
    logprobs = sglang_scheduler_pb2.OutputLogProbs.DESCRIPTOR.fields_by_name
    assert {"token_logprobs", "token_ids"} <= set(logprobs)
    req = generate_request_pb("k#0", (1, 2), SamplingParams(max_new_tokens=3))
    assert req.stream and req.return_logprob and req.HasField("tokenized")
