"""``rlfleet sample``: rejection sampling, DeepSeek-R1's quality step. ``n`` completions per
prompt from the rollout servers, each verified by the verifier fleet as ``rlfleet train``
verifies them; only the verified-correct ones are kept, deduplicated per prompt and capped
per prompt, as SFT data (one JSON line each).

What counts as correct (``is_correct``): the accuracy reward is full (math: the checker says
AC; code: every test passed, whatever ``code_accuracy`` a training run uses) and, unless
``require_format`` is off, the completion has the shape its prompt template asks for (the
format reward: R1's ``<think>...</think><answer>...</answer>`` for ``r1``, one integer for
``plain``), since SFT data teaches the shape as much as the answer. A completion the
verifier could not score (no result, system error) is never correct.

Duplicates are completions of one prompt whose text is the same once leading and trailing
whitespace is stripped. Of the unique correct ones the first ``max_per_prompt`` by sample
index are kept: the index says nothing about the text, so the cap keeps an unbiased subset
(keeping the shortest would teach short answers).

Lines are written, and flushed, as each prompt finishes (in the order prompts finish, not
the input order), so an interrupted run leaves a valid JSONL file of everything kept so far.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import grpc

from rlfleet.errors import CommandError, Unavailable, UsageError
from rlfleet.learner.data import DataError, LoadConfig, Task, load_tasks
from rlfleet.learner.rewards import Reward, RewardConfig, RewardFunction, reward_input
from rlfleet.learner.schedule import sample_seed
from rlfleet.learner.scoring import VerdictCache, VerifierLike, score
from rlfleet.learner.tasks import (
    BUILTIN_MAX_NEW_TOKENS,
    BUILTIN_TEMPLATE,
    BuiltinConfig,
    builtin_reward_config,
    builtin_tasks,
)
from rlfleet.learner.templates import Template, get_template
from rlfleet.rollout.records import Completion, GenerateRequest, Prompt, SamplingParams

PREFIX = "rlfleet sample"
DATA_MAX_NEW_TOKENS = 1024
"""Completion length limit for a data file's tasks when none is given."""
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True, kw_only=True)
class SampleConfig:
    n: int = 16
    """Completions sampled per prompt."""
    max_per_prompt: int = 4
    """Unique correct completions kept per prompt at most."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy, so all ``n`` alike)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off)."""
    max_new_tokens: int | None = None
    """Completion length limit; None: 1 for the built-in task, ``DATA_MAX_NEW_TOKENS`` for a
    data file."""
    seed: int = 0
    """Sampling seeds (prompt i's samples use ``sample_seed(seed, 0, i)`` + their index) and
    the built-in task's order."""
    template: str | None = None
    """Prompt template (``learner.templates``); None: as ``rlfleet train`` picks it
    (``plain`` for the built-in task, ``r1`` for a data file)."""
    require_format: bool = True
    """A correct completion must also have the template's answer shape."""
    rewards: RewardConfig = field(default_factory=builtin_reward_config)
    """Weights of the ``reward`` written with each line (``rlfleet train``'s defaults)."""
    limit: int | None = None
    """Sample the first ``limit`` prompts only; None: all."""
    concurrency: int = 8
    """Prompts in flight at once."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n: must be >= 1")
        if self.max_per_prompt < 1:
            raise ValueError("max_per_prompt: must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be >= 1")
        if self.seed < 0:
            raise ValueError("seed: must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be >= 1")
        if self.concurrency < 1:
            raise ValueError("concurrency: must be >= 1")
        if self.template is not None:
            get_template(self.template)  # (raises ValueError naming the choices)


@dataclass(frozen=True, kw_only=True)
class SampleCommand:
    out: Path
    """JSONL file the kept completions are written to; ``-``: standard output."""
    model: Path | None = None
    """HF model directory the embedded rollout server serves; None when ``rollout`` is given."""
    data: Path | None = None
    """JSONL or parquet file of tasks (``learner.data`` formats); None: the built-in task."""
    data_format: str | None = None
    """The data file's format (a ``learner.data.FORMATS`` name); None: recognised per record."""
    rollout: str | None = None
    """Rollout servers to sample from; None: start one on ``model`` (torch engine)."""
    verifier: str | None = None
    """Verifier servers; None: start ``rlfleet serve sandbox``."""
    force: bool = False
    """Overwrite ``out`` when it already holds something."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    sandbox_workers: int = 2
    """Workers of the embedded sandbox server."""
    start_timeout_s: float = 120.0
    """How long an embedded server may take to listen."""


# -- selection (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scored:
    """One completion with its reward and whether it counts as correct."""

    completion: Completion
    reward: Reward
    correct: bool


@dataclass(frozen=True, kw_only=True)
class Selection:
    kept: tuple[Scored, ...]
    """Unique correct completions, at most the cap, by sample index."""
    scored: int
    """Completions the verifier gave a result for."""
    correct: int
    """Of those, correct (duplicates included)."""
    duplicates: int
    """Correct completions dropped as the same text as a kept or earlier one."""
    over_cap: int
    """Unique correct completions dropped by the cap."""

    @property
    def pass_rate(self) -> float | None:
        """Correct / scored; None when nothing was scored."""
        return self.correct / self.scored if self.scored else None


def is_correct(reward: Reward, require_format: bool) -> bool:
    """Full accuracy (and the template's answer shape, if required); unscored: never."""
    if not reward.scored or reward.value("accuracy") != 1.0:
        return False
    return not require_format or reward.value("format") == 1.0


def dedupe_key(text: str) -> str:
    return text.strip()


def select(samples: Sequence[Scored], max_per_prompt: int) -> Selection:
    """The completions of one prompt to keep (see the module docstring)."""
    seen: set[str] = set()
    kept: list[Scored] = []
    duplicates = over_cap = 0
    for s in sorted(samples, key=lambda s: s.completion.sample):
        if not s.correct:
            continue
        key = dedupe_key(s.completion.text)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if len(kept) == max_per_prompt:
            over_cap += 1
            continue
        kept.append(s)
    return Selection(
        kept=tuple(kept),
        scored=sum(s.reward.scored for s in samples),
        correct=sum(s.correct for s in samples),
        duplicates=duplicates,
        over_cap=over_cap,
    )


def sft_record(task: Task, template: Template, s: Scored, selection: Selection) -> dict[str, Any]:
    """One output line: the exact prompt and completion (``prompt``/``completion``, the
    prompt-completion SFT form) and the chat form (``messages``: the problem as the user's
    turn), with what identifies and scores it."""
    c = s.completion
    prompt = template.render(task)
    return {
        "id": f"{task.id}#{c.sample}",
        "prompt_id": task.id,
        "sample": c.sample,
        "source": task.source,
        "task_type": task.task_type,
        "template": template.name,
        "problem": task.prompt,
        "prompt": prompt,
        "completion": c.text,
        "messages": [
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": c.text},
        ],
        "reward": s.reward.total,
        "rewards": {comp.name: comp.value for comp in s.reward.components},
        "verdict": c.result.verdict.value if c.result is not None else None,
        "pass_rate": selection.pass_rate,
        "prompt_token_ids": list(c.prompt_token_ids),
        "token_ids": list(c.token_ids),
        "finish_reason": c.finish_reason.value,
        "seed": c.seed,
        "policy_version": c.versions[-1].version if c.versions else None,
    }


# -- totals ----------------------------------------------------------------------------------


@dataclass
class Totals:
    prompts: int = 0
    samples: int = 0
    scored: int = 0
    correct: int = 0
    kept: int = 0
    duplicates: int = 0
    over_cap: int = 0
    solved: int = 0
    """Prompts with at least one correct completion."""
    pass_rates: list[float] = field(default_factory=list)

    def add(self, samples: int, sel: Selection) -> None:
        self.prompts += 1
        self.samples += samples
        self.scored += sel.scored
        self.correct += sel.correct
        self.kept += len(sel.kept)
        self.duplicates += sel.duplicates
        self.over_cap += sel.over_cap
        self.solved += sel.correct > 0
        if sel.pass_rate is not None:
            self.pass_rates.append(sel.pass_rate)


PASS_RATE_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.0, "0"),
    (0.0, 0.25, "<=25%"),
    (0.25, 0.5, "<=50%"),
    (0.5, 0.75, "<=75%"),
    (0.75, 1.0, "<100%"),
    (1.0, 1.0, "100%"),
)
"""(low, high, name): exactly ``low`` when they are equal, else (low, high] less 100%."""


def pass_rate_histogram(rates: Sequence[float]) -> list[tuple[str, int]]:
    """Prompts per pass-rate bin: exactly 0, (0, 25%], ..., (75%, 100%), exactly 100%."""
    counts = []
    for low, high, name in PASS_RATE_BINS:
        if low == high:
            counts.append((name, sum(r == low for r in rates)))
        else:
            counts.append((name, sum(low < r <= high and r != 1.0 for r in rates)))
    return counts


def summary_lines(t: Totals, total_prompts: int) -> list[str]:
    rate = f"{t.correct / t.scored:.1%}" if t.scored else "-"
    lines = [
        f"prompts: {t.prompts} of {total_prompts} sampled, {t.solved} with a correct completion",
        f"samples: {t.samples}, scored {t.scored}, correct {t.correct} ({rate})",
        f"kept: {t.kept} (dropped {t.duplicates} duplicates, {t.over_cap} over the cap)",
    ]
    if t.pass_rates:
        mean = sum(t.pass_rates) / len(t.pass_rates)
        bins = ", ".join(f"{name}: {count}" for name, count in pass_rate_histogram(t.pass_rates))
        lines.append(f"per-prompt pass rate: mean {mean:.1%}; prompts by rate: {bins}")
    return lines


# -- the command -----------------------------------------------------------------------------


def progress(line: str) -> None:
    print(f"{PREFIX}: {line}", file=sys.stderr, flush=True)


def load_sample_tasks(cmd: SampleCommand) -> list[Task]:
    if cmd.data is None:
        tasks = builtin_tasks(BuiltinConfig(seed=cmd.sample.seed))
    else:
        try:
            tasks = load_tasks(cmd.data, LoadConfig(format=cmd.data_format))
        except (DataError, ValueError) as e:
            raise UsageError(str(e)) from None
        if not tasks:
            raise UsageError(f"{cmd.data}: no tasks in it")
    return tasks[: cmd.sample.limit] if cmd.sample.limit is not None else tasks


def resolve(cmd: SampleCommand) -> tuple[Template, SamplingParams]:
    """The template and the sampling parameters (seed left to each prompt)."""
    cfg = cmd.sample
    name = cfg.template or (BUILTIN_TEMPLATE if cmd.data is None else "r1")
    default_tokens = BUILTIN_MAX_NEW_TOKENS if cmd.data is None else DATA_MAX_NEW_TOKENS
    return get_template(name), SamplingParams(
        max_new_tokens=cfg.max_new_tokens or default_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
    )


class RolloutLike(Protocol):
    """What ``Sampler`` needs of ``RolloutClient`` (fakes in tests)."""

    def generate(self, request: GenerateRequest) -> AsyncIterator[Completion]: ...


class Sampler:
    """Samples, scores and selects one prompt at a time (the clients are the caller's)."""

    def __init__(
        self,
        *,
        config: SampleConfig,
        template: Template,
        sampling: SamplingParams,
        rollout: RolloutLike,
        verifier: VerifierLike,
    ) -> None:
        self.config = config
        self.template = template
        self.sampling = sampling
        self.rollout = rollout
        self.verifier = verifier
        self.reward_fn = RewardFunction(config.rewards, template)

    async def generate(self, index: int, task: Task) -> list[Completion]:
        from rlfleet.rollout.client import RequestRejected

        request = GenerateRequest(
            prompts=(Prompt(id=task.id, text=self.template.render(task), n=self.config.n),),
            sampling=dataclasses.replace(
                self.sampling, seed=sample_seed(self.config.seed, 0, index)
            ),
        )
        try:
            out = [c async for c in self.rollout.generate(request)]
        except RequestRejected as e:
            raise UsageError(f"the rollout server refused prompt {task.id!r}: {e}") from None
        return sorted(out, key=lambda c: c.sample)

    async def prompt(self, index: int, task: Task) -> tuple[list[Scored], Selection]:
        completions = await self.generate(index, task)
        # (A cache per prompt: its keys hold the task's id, so none would be asked again.)
        pairs = [(task, c.text) for c in completions]
        results, _ = await score(self.verifier, pairs, VerdictCache())
        scored = []
        for c, result in zip(completions, results, strict=True):
            c = dataclasses.replace(c, result=result)
            reward = self.reward_fn(reward_input(c, task.task_type, self.sampling.max_new_tokens))
            correct = is_correct(reward, self.config.require_format)
            scored.append(Scored(completion=c, reward=reward, correct=correct))
        return scored, select(scored, self.config.max_per_prompt)


@contextmanager
def open_output(path: Path, force: bool) -> Iterator[TextIO]:
    if str(path) == "-":
        yield sys.stdout
        return
    if path.is_dir():
        raise UsageError(f"--out {path}: is a directory")
    if path.exists() and path.stat().st_size > 0 and not force:
        raise UsageError(f"--out {path}: already holds data; choose a new file, or give --force")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("w", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--out {path}: cannot write it ({e.strerror or e})") from None
    with f:
        yield f


@contextmanager
def logs_dir() -> Iterator[Path]:
    """Where the embedded servers' logs go: a temporary directory, kept when the run fails
    (an embedded server's error names its log there)."""
    path = Path(tempfile.mkdtemp(prefix="rlfleet-sample-"))
    try:
        yield path
    except CommandError:
        raise
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)


async def sample(cmd: SampleCommand) -> int:
    """Run rejection sampling; returns the exit code (0)."""
    from rlfleet.learner.fleet import embedded_fleet
    from rlfleet.rollout.client import RolloutClient
    from rlfleet.sandbox.client import VerifierClient, channel_target

    if cmd.rollout is None and cmd.model is None:
        raise UsageError("give --model DIR (served by an embedded rollout server) or --rollout")
    if cmd.rollout is not None and cmd.model is not None:
        raise UsageError(
            "--model: the --rollout servers serve their own model; give one of the two"
        )
    if cmd.model is not None and not (cmd.model / "config.json").is_file():
        raise UsageError(f"--model {cmd.model}: no config.json there (not an HF model directory)")
    if cmd.data is None and cmd.data_format is not None:
        raise UsageError("--format: goes with --data (the built-in task has its own)")
    for flag, target in (("--rollout", cmd.rollout), ("--verifier", cmd.verifier)):
        try:
            if target is not None:
                channel_target(target)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
    tasks = load_sample_tasks(cmd)
    template, sampling = resolve(cmd)
    totals = Totals()
    to_stdout = str(cmd.out) == "-"
    with open_output(cmd.out, cmd.force) as out, logs_dir() as logs:
        async with embedded_fleet(
            run_dir=logs,
            model=cmd.model or Path(),
            rollout=cmd.rollout,
            verifier=cmd.verifier,
            sandbox_workers=cmd.sandbox_workers,
            start_timeout_s=cmd.start_timeout_s,
        ) as targets:
            if cmd.rollout is None or cmd.verifier is None:
                progress(f"embedded fleet: rollout {targets.rollout}, verifier {targets.verifier}")
            async with (
                RolloutClient(targets.rollout) as rollout,
                VerifierClient(targets.verifier) as verifier,
            ):
                sampler = Sampler(
                    config=cmd.sample,
                    template=template,
                    sampling=sampling,
                    rollout=rollout,
                    verifier=verifier,
                )
                progress(
                    f"{len(tasks)} prompts x {cmd.sample.n} samples, template {template.name}, "
                    f"max {sampling.max_new_tokens} new tokens"
                )
                await run_prompts(sampler, tasks, out, totals)
    print_to = sys.stderr if to_stdout else sys.stdout
    for line in summary_lines(totals, len(tasks)):
        print(f"{PREFIX}: {line}" if to_stdout else line, file=print_to, flush=True)
    return 0


async def run_prompts(sampler: Sampler, tasks: Sequence[Task], out: TextIO, totals: Totals) -> None:
    """Every task through ``sampler``, ``concurrency`` at a time; kept lines written (and
    flushed) as each prompt finishes; progress every few seconds."""
    started = last = time.monotonic()
    queue = iter(enumerate(tasks))

    async def worker() -> None:
        nonlocal last
        for index, task in queue:
            scored, selection = await sampler.prompt(index, task)
            lines = [sft_record(task, sampler.template, s, selection) for s in selection.kept]
            if lines:
                out.write("".join(json.dumps(line) + "\n" for line in lines))
                out.flush()
            totals.add(len(scored), selection)
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S or totals.prompts == len(tasks):
                last = now
                progress(
                    f"{totals.prompts}/{len(tasks)} prompts, {totals.samples} samples, "
                    f"{totals.correct} correct, {totals.kept} kept ({now - started:.0f} s)"
                )

    workers = [
        asyncio.create_task(worker()) for _ in range(min(sampler.config.concurrency, len(tasks)))
    ]
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    for w in done:
        error = w.exception()
        if error is None:
            continue
        if isinstance(error, Unavailable):
            raise CommandError(f"{error}; check --rollout / --verifier") from error
        if isinstance(error, grpc.aio.AioRpcError):
            raise CommandError(
                f"a server failed: {error.code().name}: {error.details()}"
            ) from error
        raise error
