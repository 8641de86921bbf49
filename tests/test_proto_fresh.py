"""The checked-in generated code under rlfleet/v1 matches what proto/ generates today."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "rlfleet" / "v1"


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "rlfleet_proto_generate", ROOT / "proto" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    _generate_module().generate(tmp_path)
    fresh = {
        p.relative_to(tmp_path / "rlfleet" / "v1"): p
        for p in (tmp_path / "rlfleet" / "v1").iterdir()
    }
    checked_in = {
        p.relative_to(GENERATED): p
        for p in GENERATED.iterdir()
        if p.is_file() and p.name != "__init__.py" and p.suffix in (".py", ".pyi")
    }
    assert fresh, "protoc generated nothing"
    assert sorted(map(str, fresh)) == sorted(map(str, checked_in)), "generated files differ in name"
    stale = [
        str(name)
        for name, path in fresh.items()
        if path.read_bytes() != checked_in[name].read_bytes()
    ]
    assert not stale, f"stale generated code {stale}: run `python proto/generate.py` and commit"
