"""The GRPO loop: batches sampled from the rollout servers and scored through the verifier
fleet, group advantages, one optimizer step per batch, the new weights pushed after each.

Generation runs ahead of training by up to ``max_staleness`` steps: the batch of step ``j``
is started once the rollout servers serve version ``j - max_staleness``, so while step ``k``
trains, the batches of steps ``k+1 .. k+max_staleness`` are being generated and scored
(``max_staleness = 0``: each batch waits for the previous step's weights, synchronous). A
sample is thus at most ``max_staleness`` versions behind the learner that trains on it.

Versions: step ``k`` trains the policy ``base + k`` into ``base + k + 1`` and pushes it.
``base`` is 0 unless a rollout server already serves a newer version at the start (an
external fleet that outlived a run): the run then numbers its versions above it.

``Trainer.run`` drives the pipeline and hands each step's ``StepRecord`` (the line of
``metrics.jsonl``) to a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlfleet.heap import freeze_startup_objects
from rlfleet.learner import follow
from rlfleet.learner.algorithms import LossFn, make_advantages, make_loss
from rlfleet.learner.broadcast import BroadcastPusher
from rlfleet.learner.checkpoint import TrainerState, save_checkpoint
from rlfleet.learner.config import TrainConfig
from rlfleet.learner.data import Task
from rlfleet.learner.export import push_weights_each
from rlfleet.learner.losses import LossInputs, token_logprobs
from rlfleet.learner.optim import clip_gradients
from rlfleet.learner.pool import Group, NoRolloutServer, PushReport, RolloutPool
from rlfleet.learner.rewards import Reward, RewardFunction, reward_input
from rlfleet.learner.schedule import batch_indices, sample_seed
from rlfleet.learner.scoring import BatchScorer, StreamingVerifier, VerdictCache
from rlfleet.learner.templates import Template
from rlfleet.rollout.client import RolloutClient
from rlfleet.rollout.records import Completion, GenerateRequest, Prompt, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Sample:
    group: int
    """Index of its prompt in the step's batch."""
    completion: Completion
    reward: Reward


@dataclass(frozen=True, kw_only=True)
class Batch:
    """A step's prompts, generated and scored."""

    step: int
    tasks: list[Task]
    refills: list[Task]
    """Prompts sampled besides ``tasks`` to replace groups dynamic sampling dropped."""
    generated: list[Sample]
    """Every sample of the step (the rewards' statistics are over these)."""
    samples: list[Sample]
    """The ones trained on (all, unless dynamic sampling dropped groups)."""
    unique_pairs: int
    cache_hits: int
    verified: int
    resent: int
    """Groups asked again of another rollout server after theirs failed."""
    servers: int
    """Rollout servers that generated groups of the batch."""
    time_generate_s: float
    """From the batch's start to its last group generated."""
    time_reward_s: float
    """From then to its last sample scored."""


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One line of ``metrics.jsonl``."""

    step: int
    policy_version: int
    """Oldest policy version any of the step's tokens came from."""
    staleness: int
    """How many versions that is behind the policy the step trains (0: synchronous)."""
    staleness_mean: float
    """Mean over the step's samples of the versions their oldest token lags by."""
    prompt_ids: list[str]
    reward_mean: float | None
    """Mean total reward over the scored samples (None: none scored)."""
    accuracy_mean: float | None
    samples: int
    scored: int
    unique_pairs: int
    cache_hits: int
    verified: int
    resent: int
    """Groups re-sent to another rollout server after theirs failed."""
    servers: int
    """Rollout servers that took the weights pushed after the step."""
    trained_samples: int = 0
    """Samples trained on: ``samples`` less the groups dynamic sampling dropped."""
    refill_ids: list[str] = field(default_factory=list)
    """Prompts dynamic sampling added to the step's own (``prompt_ids``)."""
    tokens: int
    """Completion tokens generated."""
    tokens_per_s: float
    """Completion tokens per second of the whole step."""
    time_generate_s: float
    """The batch's generation (overlapping earlier steps when running ahead)."""
    time_reward_s: float
    """From the batch's last group generated to its last sample scored."""
    time_wait_s: float
    """How long the step waited for its batch (0 when generation kept ahead)."""
    time_train_s: float
    time_push_s: float
    time_step_s: float
    """Wall time from the previous step's end (or the run's start) to this one's."""
    wall_s: float
    """Seconds since the run (or its resumption) started."""
    lr: float
    grad_norm: float | None
    push_bytes: int = 0
    """Bytes of the weights pushed to each server."""
    train: dict[str, float] = field(default_factory=dict)
    """The loss's metrics (loss, clip fractions, learner/engine logprob mismatch, ...)."""
    reward_min: float | None = None
    reward_max: float | None = None
    push_failures: int = 0
    """Rollout servers that did not take the step's weights (they get no prompts until
    they take a later push)."""
    sample_staleness: list[int] = field(default_factory=list)
    """Versions each sample's oldest token lags the trained policy by (for the metrics;
    not written to ``metrics.jsonl``, where ``staleness``/``staleness_mean`` sum it up)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["sample_staleness"]
        return out


class Trainer:
    """Holds the model, optimizer and clients of a run; ``run`` drives the loop."""

    def __init__(
        self,
        *,
        config: TrainConfig,
        tasks: Sequence[Task],
        template: Template,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rollout: RolloutPool | None,
        verifier: StreamingVerifier | None,
        device: torch.device,
        spool_dir: Path,
        checkpoint_dir: Path,
        reference: nn.Module | None = None,
        broadcaster: BroadcastPusher | None = None,
    ) -> None:
        self.config = config
        self.tasks = list(tasks)
        self.template = template
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.rollout = rollout
        self.verifier = verifier
        self.device = device
        self.spool_dir = spool_dir
        self.checkpoint_dir = checkpoint_dir
        self.reference = reference
        """The frozen initial policy of the KL term (None: the term is off)."""
        self.broadcaster = broadcaster
        """Rank 0's weight groups when weights go by broadcast (``push.transport =
        "distributed"``); None: through UpdateWeights."""
        self.reward_fn = RewardFunction(config.rewards, template)
        self.loss_fn: LossFn = make_loss(config.algorithm)
        self.advantage_fn = make_advantages(config.algorithm)
        self.cache = VerdictCache()
        self.started = time.monotonic()
        self.base = 0
        """Version of the policy before step 0 (see the module's docstring)."""
        self.served = asyncio.Condition()
        self.serving = -1
        """Newest version every live rollout server has taken (-1: none yet)."""

    @property
    def pool(self) -> RolloutPool:
        if self.rollout is None:
            raise RuntimeError("only rank 0 talks to the rollout servers")
        return self.rollout

    def batch(self, step: int) -> list[Task]:
        per = self.config.rollout.prompts_per_step
        indices = batch_indices(len(self.tasks), self.config.seed, step * per, per)
        return [self.tasks[i] for i in indices]

    def refill(self, step: int, round_: int, count: int) -> list[Task]:
        """``count`` prompts for dynamic sampling's round ``round_`` of step ``step``: a
        function of (seed, step, round) alone."""
        rng = random.Random(f"{self.config.seed}/refill/{step}/{round_}")
        return [self.tasks[rng.randrange(len(self.tasks))] for _ in range(count)]

    def request(self, step: int, group: int, task: Task) -> GenerateRequest:
        r = self.config.rollout
        return GenerateRequest(
            prompts=(Prompt(id=task.id, text=self.template.render(task), n=r.n),),
            sampling=SamplingParams(
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=sample_seed(self.config.seed, step, group),
            ),
        )

    async def produce(self, step: int) -> Batch:
        """Step ``step``'s batch: each group generated by one rollout server on a policy no
        older than ``max_staleness`` versions before the step's, and scored as soon as it is
        whole (groups overlap: the verifier works while the engines still generate)."""
        oldest = self.base + step - self.config.rollout.max_staleness
        async with self.served:
            await self.served.wait_for(lambda: self.serving >= oldest)
        t0 = time.monotonic()
        batch = self.batch(step)
        if self.verifier is None:
            raise RuntimeError("only rank 0 talks to the verifier fleet")
        async with BatchScorer(self.verifier, self.cache) as scorer:
            return await self._produce(step, batch, oldest, t0, scorer)

    async def _produce(
        self, step: int, batch: list[Task], oldest: int, t0: float, scorer: BatchScorer
    ) -> Batch:
        generated: list[float] = []
        servers: set[str] = set()
        resent = 0
        counts = {"unique": 0, "cache_hits": 0, "verified": 0}

        async def some(first: int, tasks: list[Task]) -> list[list[Sample]]:
            """Groups ``first ..`` of the step, for ``tasks``: asked of the servers together
            (``RolloutPool.generate_groups``), each scored as soon as it is whole."""
            nonlocal resent
            requests = [self.request(step, first + i, t) for i, t in enumerate(tasks)]
            scored: dict[int, asyncio.Task[list[Sample]]] = {}
            try:
                async with contextlib.aclosing(self.pool.generate_groups(requests, oldest)) as it:
                    async for i, done in it:
                        generated.append(time.monotonic())
                        servers.add(done.server)
                        resent += done.resent
                        scored[i] = asyncio.create_task(score(first + i, tasks[i], done))
                return [await scored[i] for i in range(len(tasks))]
            finally:
                for task in scored.values():
                    task.cancel()
                await asyncio.gather(*scored.values(), return_exceptions=True)

        async def score(group: int, task: Task, done: Group) -> list[Sample]:
            samples, stats = await self.rewards(scorer, group, task, done.completions)
            for key, value in stats.items():
                counts[key] += value
            return samples

        groups = await some(0, batch)
        trained = groups
        refills: list[Task] = []
        if self.config.algorithm.resolved_dynamic_sampling:
            # DAPO: a group whose rewards are all equal has no advantage to learn from; it
            # is dropped, and more prompts are sampled (a stream of their own per step, so a
            # resumed run draws the same ones) until the batch is full again.
            per = len(batch)
            trained = [g for g in groups if _varied(g)]
            for round_ in range(self.config.algorithm.dynamic_sampling_rounds):
                if len(trained) >= per:
                    break
                extra = self.refill(step, round_, per - len(trained))
                first = len(batch) + len(refills)
                refills += extra
                more = await some(first, extra)
                groups += more
                trained += [g for g in more if _varied(g)]
            trained = trained[:per]
        t2 = time.monotonic()
        t1 = max(generated, default=t2)
        return Batch(
            step=step,
            tasks=batch,
            refills=refills,
            generated=[s for group in groups for s in group],
            samples=[s for group in trained for s in group],
            unique_pairs=counts["unique"],
            cache_hits=counts["cache_hits"],
            verified=counts["verified"],
            resent=resent,
            servers=len(servers),
            time_generate_s=t1 - t0,
            time_reward_s=t2 - t1,
        )

    async def rewards(
        self, scorer: BatchScorer, group: int, task: Task, completions: Sequence[Completion]
    ) -> tuple[list[Sample], dict[str, int]]:
        results, stats = await scorer.score([(task, c.text) for c in completions])
        samples = []
        for c, result in zip(completions, results, strict=True):
            scored = dataclasses.replace(c, result=result)
            inp = reward_input(scored, task.task_type, self.config.rollout.max_new_tokens)
            samples.append(Sample(group=group, completion=c, reward=self.reward_fn(inp)))
        counts = {
            "unique": stats.unique,
            "cache_hits": stats.cache_hits,
            "verified": stats.verified,
        }
        return samples, counts

    def advantages(self, samples: Sequence[Sample]) -> list[tuple[Sample, float]]:
        """Group-normalised advantages over each group's scored samples (unscored ones are
        left out of the group and of the batch)."""
        by_group: dict[int, list[Sample]] = {}
        for s in samples:
            if s.reward.total is not None:
                by_group.setdefault(s.group, []).append(s)
        out: list[tuple[Sample, float]] = []
        for members in by_group.values():
            rewards = torch.tensor([[s.reward.total for s in members]], dtype=torch.float32)
            adv = self.advantage_fn(rewards)[0]  # [G']
            out += [(s, float(a)) for s, a in zip(members, adv, strict=True)]
        return out

    def train(self, whole: Sequence[tuple[Sample, float]]) -> tuple[dict[str, float], float]:
        """One optimizer step on the batch ``whole``; the loss's metrics and the gradient
        norm. Collective: every rank calls it with the same batch and trains on its slice
        (every ``world``-th sample); the slices' losses are scaled so that their gradients,
        averaged by FSDP, are those of the whole batch's loss."""
        world, rank = follow.world_size(), follow.rank()
        batch = list(whole[rank::world])
        weight = 1.0
        if not batch:  # (fewer samples than ranks: this one still joins the collectives)
            batch, weight = [whole[0]], 0.0
        completions = [s.completion for s, _ in batch]
        full = [c.prompt_token_ids + c.token_ids for c in completions]
        size, length = len(full), max(len(f) for f in full)
        width = max(len(c.token_ids) for c in completions)
        ids = torch.zeros(size, length, dtype=torch.long)
        attention = torch.zeros(size, length, dtype=torch.long)
        positions = torch.zeros(size, width, dtype=torch.long)
        tokens = torch.zeros(size, width, dtype=torch.long)
        mask = torch.zeros(size, width, dtype=torch.bool)
        rollout_logprobs = torch.zeros(size, width)
        for i, (c, f) in enumerate(zip(completions, full, strict=True)):
            ids[i, : len(f)] = torch.tensor(f)
            attention[i, : len(f)] = 1
            n, start = len(c.token_ids), len(c.prompt_token_ids) - 1
            positions[i, :n] = torch.arange(start, start + n)  # logits there predict them
            tokens[i, :n] = torch.tensor(c.token_ids)
            mask[i, :n] = True
            rollout_logprobs[i, :n] = torch.tensor(c.logprobs)
        advantages = torch.tensor([a for _, a in batch])  # [B]
        ragged = bool((attention == 0).any())
        ids, positions, tokens = (
            ids.to(self.device),
            positions.to(self.device),
            tokens.to(self.device),
        )
        attend = attention.to(self.device) if ragged else None

        def completion_logprobs(model: nn.Module) -> torch.Tensor:
            logits = model(input_ids=ids, attention_mask=attend).logits  # [B, L, V]
            vocab = logits.shape[-1]
            picked = logits.gather(1, positions[..., None].expand(size, width, vocab))  # [B, T, V]
            # The engine's logprobs are of the temperature-scaled distribution: so are these.
            return token_logprobs(picked / self.config.rollout.temperature, tokens)  # [B, T]

        ref_logprobs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_logprobs = completion_logprobs(self.reference)
        self.model.train()
        logprobs = completion_logprobs(self.model)
        loss, metrics = self.loss_fn(
            LossInputs(
                logprobs=logprobs,
                rollout_logprobs=rollout_logprobs.to(self.device),
                advantages=advantages.to(self.device),
                mask=mask.to(self.device),
                # One update per batch: the learner's policy before it is this one, so the
                # clipped ratio starts at 1 and TIS weighs the engine/learner mismatch alone.
                old_logprobs=logprobs.detach() if self.config.algorithm.tis_cap else None,
                ref_logprobs=ref_logprobs,
                total_sequences=len(whole),
                total_tokens=sum(len(s.completion.token_ids) for s, _ in whole),
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (weight * world)).backward()
        if world > 1:
            metrics = _combine(metrics if weight else {}, world)
        grad_norm = clip_gradients(self.model, self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return metrics, grad_norm

    async def save(self, state: TrainerState) -> None:
        """A checkpoint of the learner at ``state`` (collective, in a thread: the batches
        ahead keep streaming meanwhile)."""
        follow.announce(follow.CheckpointOrder(state))
        await asyncio.to_thread(
            save_checkpoint,
            self.checkpoint_dir,
            state,
            self.model,
            self.optimizer,
            self.scheduler,
            self.config.checkpoint,
        )

    async def follow(self) -> None:
        """A rank other than 0: enter the collectives rank 0 announces, until it stops."""
        while True:
            order = await asyncio.to_thread(follow.receive)
            if isinstance(order, follow.StopOrder):
                return
            if isinstance(order, follow.TrainOrder):
                await asyncio.to_thread(self.train, order.batch)
            elif isinstance(order, follow.PushOrder):
                # (The gather's collectives, the same whatever the transport.)
                await push_weights_each([], self.model, order.version, spool_dir=self.spool_dir)
            else:
                await self.save(order.state)

    async def push(self, version: int) -> PushReport:
        """The learner's weights as ``version`` to every rollout server; the batches waiting
        for that version may start once it is served."""

        async def each(clients: Sequence[RolloutClient]) -> list[Any]:
            follow.announce(follow.PushOrder(version))
            if self.broadcaster is not None:
                return await self.broadcaster.push(clients, self.model, version)
            return await push_weights_each(
                clients,
                self.model,
                version,
                spool_dir=self.spool_dir,
                dtype=self.config.push.torch_dtype,
            )

        report = await self.pool.push(version, each)
        async with self.served:
            self.serving = version
            self.served.notify_all()
        return report

    async def begin(self, start: int) -> PushReport | None:
        """Before step ``start``: the servers' versions read; the version numbering moved
        above any newer one; the learner's weights pushed unless every server already
        serves them (a fresh run on servers that loaded its model)."""
        if self.broadcaster is not None:
            await self.broadcaster.check(self.pool.clients)
        versions = await self.pool.versions()
        known = [v for v in versions.values() if v is not None]
        if not known:
            why = "; ".join(f"{s.address}: {s.failure}" for s in self.pool.servers.values())
            raise NoRolloutServer(f"no rollout server answers: {why}")
        newest = max(known)
        if start == 0 and all(v == 0 for v in versions.values()):
            self.pool.adopt(versions, 0)
            async with self.served:
                self.serving = 0
                self.served.notify_all()
            return None
        self.base = max(0, newest + 1 - start)
        return await self.push(self.base + start)

    async def run(
        self,
        start: int,
        steps: int,
        on_step: Callable[[StepRecord], Awaitable[None]],
    ) -> None:
        """Steps ``start .. steps-1``, each record handed to ``on_step`` (which may save a
        checkpoint) before the next step trains."""
        ahead = self.config.rollout.max_staleness
        batches: dict[int, asyncio.Task[Batch]] = {}
        launched = start  # the first step whose batch is not started yet

        def launch(upto: int) -> None:
            # Each step's batch starts once: one its step has taken is not in ``batches``
            # any more, and must not start again.
            nonlocal launched
            for j in range(launched, min(upto, steps - 1) + 1):
                batches[j] = asyncio.create_task(self.produce(j), name=f"batch {j}")
                launched = j + 1

        last = time.monotonic()
        try:
            await self.begin(start)
            freeze_startup_objects()
            for step in range(start, steps):
                launch(step + ahead)
                t0 = time.monotonic()
                batch = await batches.pop(step)
                t1 = time.monotonic()
                record = await self.step(batch, wait_s=t1 - t0, since=last)
                last = time.monotonic()
                await on_step(record)
            follow.announce(follow.StopOrder())
        finally:
            for task in batches.values():
                task.cancel()
            await asyncio.gather(*batches.values(), return_exceptions=True)

    async def step(self, batch: Batch, *, wait_s: float, since: float) -> StepRecord:
        """Train on ``batch`` (in a thread: the batches ahead keep streaming meanwhile),
        then push the new weights."""
        step = batch.step
        t2 = time.monotonic()
        lr = float(self.scheduler.get_last_lr()[0])
        weighted = self.advantages(batch.samples)
        metrics: dict[str, float] = {}
        grad_norm: float | None = None
        if weighted:
            follow.announce(follow.TrainOrder(weighted))
            metrics, grad_norm = await asyncio.to_thread(self.train, weighted)
        t3 = time.monotonic()
        report = await self.push(self.base + step + 1)
        t4 = time.monotonic()
        samples = batch.generated
        totals = [s.reward.total for s in samples if s.reward.total is not None]
        accuracy = [s.reward.value("accuracy") for s in samples if s.reward.total is not None]
        trained = self.base + step
        oldest = [
            min(v.version for v in s.completion.versions) for s in samples if s.completion.versions
        ]
        version = min(oldest) if oldest else trained
        tokens = sum(len(s.completion.token_ids) for s in samples)
        return StepRecord(
            step=step,
            policy_version=version,
            staleness=trained - version,
            staleness_mean=sum(trained - v for v in oldest) / len(oldest) if oldest else 0.0,
            prompt_ids=[t.id for t in batch.tasks],
            reward_mean=sum(totals) / len(totals) if totals else None,
            accuracy_mean=sum(a for a in accuracy if a is not None) / len(accuracy)
            if accuracy
            else None,
            samples=len(samples),
            scored=len(totals),
            unique_pairs=batch.unique_pairs,
            cache_hits=batch.cache_hits,
            verified=batch.verified,
            resent=batch.resent,
            servers=len(report.served),
            trained_samples=len(batch.samples),
            refill_ids=[t.id for t in batch.refills],
            tokens=tokens,
            tokens_per_s=tokens / max(t4 - since, 1e-9),
            time_generate_s=batch.time_generate_s,
            time_reward_s=batch.time_reward_s,
            time_wait_s=wait_s,
            time_train_s=t3 - t2,
            time_push_s=t4 - t3,
            time_step_s=t4 - since,
            wall_s=t4 - self.started,
            lr=lr,
            grad_norm=grad_norm,
            push_bytes=report.bytes,
            train=metrics,
            reward_min=min(totals) if totals else None,
            reward_max=max(totals) if totals else None,
            push_failures=len(report.failed),
            sample_staleness=[trained - v for v in oldest],
        )


ADDITIVE_METRICS = frozenset({"loss", "pg_loss", "kl_loss", "tokens", "sequences"})
"""Loss metrics that are sums over the batch's slices; the others are averaged over ranks."""


def _combine(metrics: dict[str, float], world: int) -> dict[str, float]:
    """The whole batch's loss metrics from each rank's slice's (collective)."""
    import torch.distributed as dist

    gathered: list[dict[str, float] | None] = [None] * world
    dist.all_gather_object(gathered, metrics)
    out: dict[str, float] = {}
    for key in sorted({k for m in gathered if m for k in m}):
        values = [m[key] for m in gathered if m and key in m]
        out[key] = sum(values) if key in ADDITIVE_METRICS else sum(values) / len(values)
    return out


def _varied(group: Sequence[Sample]) -> bool:
    """Whether the group's scored rewards differ (so its advantages are not all 0)."""
    totals = {s.reward.total for s in group if s.reward.total is not None}
    return len(totals) > 1
