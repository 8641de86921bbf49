"""The synchronous GRPO step: sample from the rollout servers, score through the verifier
fleet, compute group advantages, one optimizer step, push the new weights.

``Trainer.step`` runs one step and returns its ``StepRecord`` (the line of
``metrics.jsonl``). The policy version of the samples is the number of optimizer steps
behind them: the rollout servers serve version ``step`` while step ``step`` samples, and
the push after it makes them serve ``step + 1``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rlfleet.learner.algorithms import LossFn, make_advantages, make_loss
from rlfleet.learner.config import TrainConfig
from rlfleet.learner.data import Task
from rlfleet.learner.export import push_weights
from rlfleet.learner.losses import LossInputs, token_logprobs
from rlfleet.learner.optim import clip_gradients
from rlfleet.learner.rewards import Reward, RewardFunction, reward_input
from rlfleet.learner.schedule import batch_indices, sample_seed
from rlfleet.learner.scoring import VerdictCache, VerifierLike, score
from rlfleet.learner.templates import Template
from rlfleet.rollout.client import RolloutClient
from rlfleet.rollout.records import Completion, GenerateRequest, Prompt, SamplingParams


@dataclass(frozen=True, kw_only=True)
class Sample:
    group: int
    """Index of its prompt in the step's batch."""
    completion: Completion
    reward: Reward


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One line of ``metrics.jsonl``."""

    step: int
    policy_version: int
    """Oldest policy version any of the step's tokens came from."""
    staleness: int
    """How many optimizer steps that version is behind the learner (0: synchronous)."""
    prompt_ids: list[str]
    reward_mean: float | None
    """Mean total reward over the scored samples (None: none scored)."""
    accuracy_mean: float | None
    samples: int
    scored: int
    unique_pairs: int
    cache_hits: int
    verified: int
    tokens: int
    """Completion tokens generated."""
    tokens_per_s: float
    """Completion tokens per second of the whole step."""
    time_generate_s: float
    time_reward_s: float
    time_train_s: float
    time_push_s: float
    time_step_s: float
    wall_s: float
    """Seconds since the run (or its resumption) started."""
    lr: float
    grad_norm: float | None
    train: dict[str, float] = field(default_factory=dict)
    """The loss's metrics (loss, clip fractions, learner/engine logprob mismatch, ...)."""
    reward_min: float | None = None
    reward_max: float | None = None
    push_bytes: int = 0
    """Tensor bytes the rollout servers applied in the step's weight push."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Holds the model, optimizer and clients of a run; ``step`` is one GRPO step."""

    def __init__(
        self,
        *,
        config: TrainConfig,
        tasks: Sequence[Task],
        template: Template,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rollout: RolloutClient,
        verifier: VerifierLike,
        device: torch.device,
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
        self.reward_fn = RewardFunction(config.rewards, template)
        self.loss_fn: LossFn = make_loss(config.algorithm)
        self.advantage_fn = make_advantages(config.algorithm)
        self.cache = VerdictCache()
        self.started = time.monotonic()

    def batch(self, step: int) -> list[Task]:
        per = self.config.rollout.prompts_per_step
        indices = batch_indices(len(self.tasks), self.config.seed, step * per, per)
        return [self.tasks[i] for i in indices]

    async def generate(self, step: int, batch: Sequence[Task]) -> list[list[Completion]]:
        """``n`` completions per prompt, each prompt its own call with its own seeds."""
        r = self.config.rollout

        async def one(group: int, task: Task) -> list[Completion]:
            request = GenerateRequest(
                prompts=(Prompt(id=task.id, text=self.template.render(task), n=r.n),),
                sampling=SamplingParams(
                    max_new_tokens=r.max_new_tokens,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    seed=sample_seed(self.config.seed, step, group),
                ),
            )
            out = [c async for c in self.rollout.generate(request)]
            return sorted(out, key=lambda c: c.sample)

        return list(await asyncio.gather(*(one(g, t) for g, t in enumerate(batch))))

    async def rewards(
        self, batch: Sequence[Task], groups: Sequence[Sequence[Completion]]
    ) -> tuple[list[Sample], dict[str, int]]:
        pairs = [(task, c.text) for task, group in zip(batch, groups, strict=True) for c in group]
        results, stats = await score(self.verifier, pairs, self.cache)
        samples = []
        flat = [
            (g, task, c) for g, (task, cs) in enumerate(zip(batch, groups, strict=True)) for c in cs
        ]
        for (g, task, c), result in zip(flat, results, strict=True):
            scored = dataclasses.replace(c, result=result)
            inp = reward_input(scored, task.task_type, self.config.rollout.max_new_tokens)
            samples.append(Sample(group=g, completion=c, reward=self.reward_fn(inp)))
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

    def train(self, batch: Sequence[tuple[Sample, float]]) -> tuple[dict[str, float], float]:
        """One optimizer step on ``batch``; the loss's metrics and the gradient norm."""
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
        self.model.train()
        out = self.model(
            input_ids=ids, attention_mask=attention.to(self.device) if ragged else None
        )
        logits = out.logits  # [B, L, V]
        vocab = logits.shape[-1]
        picked = logits.gather(1, positions[..., None].expand(size, width, vocab))  # [B, T, V]
        # The engine's logprobs are of the temperature-scaled distribution: so are these.
        logprobs = token_logprobs(picked / self.config.rollout.temperature, tokens)  # [B, T]
        loss, metrics = self.loss_fn(
            LossInputs(
                logprobs=logprobs,
                rollout_logprobs=rollout_logprobs.to(self.device),
                advantages=advantages.to(self.device),
                mask=mask.to(self.device),
            )
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_gradients(self.model, self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return metrics, grad_norm

    async def push(self, version: int) -> int:
        """Push the weights as ``version``; the tensor bytes the servers applied."""
        results = await push_weights([self.rollout], self.model, version)
        served = results[0].version if results else None
        if served != version:
            raise RuntimeError(f"weight push: the rollout server serves {served}, not {version}")
        return sum(r.bytes for r in results)

    async def step(self, step: int) -> StepRecord:
        t0 = time.monotonic()
        batch = self.batch(step)
        groups = await self.generate(step, batch)
        t1 = time.monotonic()
        samples, counts = await self.rewards(batch, groups)
        t2 = time.monotonic()
        lr = float(self.scheduler.get_last_lr()[0])
        weighted = self.advantages(samples)
        metrics: dict[str, float] = {}
        grad_norm: float | None = None
        if weighted:
            metrics, grad_norm = self.train(weighted)
        t3 = time.monotonic()
        pushed = await self.push(step + 1)
        t4 = time.monotonic()
        totals = [s.reward.total for s in samples if s.reward.total is not None]
        accuracy = [s.reward.value("accuracy") for s in samples if s.reward.total is not None]
        versions = [v.version for s in samples for v in s.completion.versions]
        version = min(versions) if versions else step
        tokens = sum(len(s.completion.token_ids) for s in samples)
        return StepRecord(
            step=step,
            policy_version=version,
            staleness=step - version,
            prompt_ids=[t.id for t in batch],
            reward_mean=sum(totals) / len(totals) if totals else None,
            accuracy_mean=sum(a for a in accuracy if a is not None) / len(accuracy)
            if accuracy
            else None,
            samples=len(samples),
            scored=len(totals),
            unique_pairs=counts["unique"],
            cache_hits=counts["cache_hits"],
            verified=counts["verified"],
            tokens=tokens,
            tokens_per_s=tokens / max(t4 - t0, 1e-9),
            time_generate_s=t1 - t0,
            time_reward_s=t2 - t1,
            time_train_s=t3 - t2,
            time_push_s=t4 - t3,
            time_step_s=t4 - t0,
            wall_s=t4 - self.started,
            lr=lr,
            grad_norm=grad_norm,
            train=metrics,
            reward_min=min(totals) if totals else None,
            reward_max=max(totals) if totals else None,
            push_bytes=pushed,
        )
