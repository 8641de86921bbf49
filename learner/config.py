"""``rlfleet train``'s configuration: one ``TrainConfig`` composed of the pieces' own configs,
read from TOML (``tomllib``) or JSON that maps 1:1 onto the dataclasses.

A file holds tables named as ``TrainConfig``'s fields (``[algorithm]``, ``[optim]``,
``[rewards]``, ``[data]``, ``[rollout]``, ``[fleet]``, ``[push]``, ``[checkpoint]``,
``[parallel]``, ``[dist]``) and its plain fields at the top (``seed = 1``, ``steps = 500``). A
key no dataclass has is an error naming it. Overrides on the command line (``optim.lr=3e-4``) are
applied to the same mapping before it becomes dataclasses: the value is read as a TOML value
(``3e-4``, ``true``, ``"grpo"``, ``[0.9, 0.99]``), or taken as a bare string when it is none.

The defaults are the built-in preset: the tiny model from random init on the built-in
one-digit task (``rlfleet.learner.tasks``), GRPO, 32 prompts x 16 samples per step.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlfleet.learner.algorithms import AlgorithmConfig
from rlfleet.learner.broadcast import PushConfig
from rlfleet.learner.checkpoint import CheckpointConfig
from rlfleet.learner.distributed import DistConfig
from rlfleet.learner.optim import OptimConfig
from rlfleet.learner.parallelize import ParallelConfig
from rlfleet.learner.rewards import RewardConfig
from rlfleet.learner.tasks import BUILTIN_MAX_NEW_TOKENS, builtin_reward_config


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    path: Path | tuple[Path, ...] | None = None
    """JSONL or parquet file of tasks (``learner.data`` formats), or a list of them (their
    tasks together, in order; an id in two files is an error); None: the built-in task."""
    format: str | None = None
    """The file's format (a ``learner.data.FORMATS`` name); None: recognised per record."""
    template: str | None = None
    """Prompt template (``learner.templates``); None: ``plain`` for the built-in task, else
    ``r1``."""


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    prompts_per_step: int = 32
    """Prompts (groups) per optimizer step."""
    n: int = 16
    """Samples per prompt (the group size G)."""
    temperature: float = 1.0
    """Sampling temperature; the learner scales its logits by the same."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    max_new_tokens: int = BUILTIN_MAX_NEW_TOKENS
    """Completion length limit in tokens."""
    max_staleness: int = 0
    """Steps generation may run ahead of training: a sample is at most this many policy
    versions older than the policy it trains (0: synchronous; 1: the next batch is
    generated while this one trains)."""

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1:
            raise ValueError("prompts_per_step: must be >= 1")
        if self.n < 1:
            raise ValueError("n: must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature: must be > 0 (the learner divides its logits by it)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be >= 1")
        if self.max_staleness < 0:
            raise ValueError("max_staleness: must be >= 0")


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    rollout: str | None = None
    """Rollout servers (``host:port``, ``dns:///name:port``, a comma list of ``ip:port``);
    None: start one (torch engine) as a child process on loopback."""
    verifier: str | None = None
    """Verifier servers, as ``rollout``; None: start ``rlfleet serve sandbox`` as a child."""
    sandbox_workers: int = 2
    """Workers of the embedded sandbox server."""
    rollout_threads: int = 1
    """CPU threads of the embedded rollout server's torch engine (``--threads``). It shares
    the machine's cores with the learner and the sandbox: on 2 cores one thread generated
    faster than torch's default of one per core (docs/learner.md); 0: torch's default."""
    start_timeout_s: float = 120.0
    """How long an embedded server may take to listen."""
    push_timeout_s: float = 300.0
    """Deadline of one weight push to one rollout server; one that misses it (or fails)
    gets no prompts until it takes a later push."""
    max_resends: int = 8
    """Times one prompt's group may be re-sent to another rollout server after its server
    failed, before the run stops."""

    def __post_init__(self) -> None:
        if self.sandbox_workers < 1:
            raise ValueError("sandbox_workers: must be >= 1")
        if self.rollout_threads < 0:
            raise ValueError("rollout_threads: must be >= 0 (0: torch's default)")
        if self.start_timeout_s <= 0:
            raise ValueError("start_timeout_s: must be > 0")
        if self.push_timeout_s <= 0:
            raise ValueError("push_timeout_s: must be > 0")
        if self.max_resends < 0:
            raise ValueError("max_resends: must be >= 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 0
    """Model init (tiny preset), task order, sampling seeds."""
    steps: int = 1000
    """Optimizer steps of the run (a resumed run continues up to this). The default's
    reward passed 0.9 at step ~620 of the built-in task (~3 min on 2 cores): 1000 leaves room."""
    model: Path | None = None
    """HF model directory to train; None: the tiny preset, made in the run dir."""
    log_every: int = 10
    """Steps between progress lines."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is always written at the end)."""
    cpu_threads: int = 1
    """The learner's intra-op threads on CPU (the embedded servers share the cores)."""
    metrics_port: int | None = None
    """Serve the learner's Prometheus metrics (``learner.metrics``) over HTTP on this port
    (rank 0 of a distributed run); None or 0: don't."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics port binds; loopback unless told otherwise."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    rewards: RewardConfig = field(default_factory=builtin_reward_config)
    """Reward weights; the default is the built-in task's (accuracy 0.9, format 0.1)."""
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    push: PushConfig = field(default_factory=PushConfig)
    """How the weights reach the rollout servers after each step: the UpdateWeights stream,
    or a broadcast (SGLang's NCCL path)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    dist: DistConfig = field(default_factory=lambda: DistConfig(device="cpu"))

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed: must be >= 0")
        if self.steps < 1:
            raise ValueError("steps: must be >= 1")
        if self.log_every < 1:
            raise ValueError("log_every: must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every: must be >= 1")
        if self.cpu_threads < 1:
            raise ValueError("cpu_threads: must be >= 1")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port: must be a port number (0-65535)")

    @property
    def template(self) -> str:
        if self.data.template is not None:
            return self.data.template
        return "plain" if self.data.path is None else "r1"


# -- mapping <-> dataclasses -----------------------------------------------------------------


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from TOML/JSON) as the field type ``tp``: nested dataclasses, paths, tuples;
    scalars are checked loosely (an int where a float goes is fine)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a valid value")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table")
        return from_mapping(tp, value, where)
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path (a string)")
        return Path(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        if (len(args) == 2 and args[1] is Ellipsis) or len(args) == 1:
            return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values")
        return tuple(
            _convert(a, v, f"{where}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, str):  # (str enums)
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid value") from None
    return value


def from_mapping(cls: type[Any], data: Mapping[str, Any], where: str = "") -> Any:
    """``cls(**data)`` with nested tables converted; unknown keys and invalid values raise
    ``ConfigError`` naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        known = ", ".join(sorted(names))
        raise ConfigError(f"unknown key {prefix}{unknown[0]} (known here: {known})")
    kwargs = {
        name: _convert(hints[name], value, f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def to_mapping(obj: Any) -> Any:
    """A config as plain JSON values (the inverse of ``from_mapping``; None values kept)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [to_mapping(v) for v in obj]
    return obj


def _drop_none(data: Any) -> Any:
    # TOML has no null: None fields are left out of a table and take their default.
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``optim.lr=3e-4`` -> (["optim", "lr"], 0.0003); the value as TOML reads it, else the
    bare string."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return data


def read_mapping(path: Path) -> dict[str, Any]:
    """A config file's mapping: TOML, or JSON for ``.json`` (the run dir's copy)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table at the top")
    return _drop_none(data)


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, **fields: Any
) -> TrainConfig:
    """The config of a file (None: the defaults), with ``overrides`` (``KEY=VALUE``) and
    then ``fields`` (the command's own flags, None ones ignored) applied."""
    data = read_mapping(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    for name, value in fields.items():
        if value is None:
            continue
        node = data
        *parents, last = name.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = to_mapping(value)
    config: TrainConfig = from_mapping(TrainConfig, data)
    return config


def write_config(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(_drop_none(to_mapping(config)), indent=2) + "\n")
