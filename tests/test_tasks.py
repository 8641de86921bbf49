"""The built-in task: deterministic, one token per answer for the tiny tokenizer, above zero
by chance for the tiny random model, and scored by the real verifier engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlfleet.learner.data import Task
from rlfleet.learner.rewards import RewardFunction, RewardInput
from rlfleet.learner.tasks import (
    BUILTIN_MAX_NEW_TOKENS,
    BUILTIN_TEMPLATE,
    DIGITS,
    BuiltinConfig,
    builtin_reward_config,
    builtin_tasks,
    chance_reward,
    gold_digit,
)
from rlfleet.learner.templates import get_template
from rlfleet.sandbox.records import CaseResult, CodeCase, MathCase, Verdict


def test_the_set_is_fixed_and_the_order_seeded() -> None:
    tasks = builtin_tasks()
    assert len(tasks) == 110 and len({t.id for t in tasks}) == 110
    assert builtin_tasks(BuiltinConfig(seed=0)) == tasks
    other = builtin_tasks(BuiltinConfig(seed=1))
    assert other != tasks and sorted(other, key=lambda t: t.id) == sorted(tasks, key=lambda t: t.id)
    kinds = {t.task_type: 0 for t in tasks}
    for t in tasks:
        kinds[t.task_type] += 1
    assert kinds == {"math": 55, "code": 55}
    assert all(gold_digit(t) in DIGITS for t in tasks)
    assert [t.task_type for t in builtin_tasks(BuiltinConfig(code=False))] == ["math"] * 55
    with pytest.raises(ValueError, match="at least one kind"):
        BuiltinConfig(math=False, code=False)


def by_id(task_id: str) -> Task:
    return next(t for t in builtin_tasks() if t.id == task_id)


def test_frames_make_what_the_verifier_sees() -> None:
    add, sub = by_id("add-3-4"), by_id("sub-7-3")
    assert (add.prompt, sub.prompt) == ("3+4=", "7-3=")
    assert add.case_for("7", "a/0") == MathCase(id="a/0", completion="\\boxed{7}", gold="7")
    case = sub.case_for("4", "s/0")
    assert isinstance(case, CodeCase) and case.code == "print(4)\n" and case.id == "s/0"
    assert case.tests[0].stdout == "4\n"  # type: ignore[union-attr]
    # Framed: the rollout service (which scores the completion alone) must not score them.
    assert add.rollout_verification is None and sub.rollout_verification is None


def test_every_prompt_and_answer_fits_the_tiny_tokenizer() -> None:
    from rlfleet.rollout.model_init import SHAPES, build_tokenizer

    tok = build_tokenizer(SHAPES["tiny"].tokenizer_vocab)
    template = get_template(BUILTIN_TEMPLATE)
    for digit in DIGITS:
        assert tok.encode(digit).tokens == [digit]  # one token per answer
    for t in builtin_tasks():
        assert len(tok.encode(template.render(t)).ids) == 4  # a, op, b, =
    assert BUILTIN_MAX_NEW_TOKENS == 1


def test_chance_reward_of_a_uniform_policy() -> None:
    vocab = 512
    n = len(builtin_tasks())
    chance = chance_reward([1 / vocab] * n, [10 / vocab] * n)
    assert chance == pytest.approx((0.9 + 0.1 * 10) / vocab)  # ~0.0037
    assert 0 < chance < 0.3


def test_chance_reward_of_the_tiny_random_model(tmp_path: Path) -> None:
    """Exact, from the random-init tiny model's next-token probabilities (a one-token answer
    is right exactly when it is the gold digit: see the verifier test below)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2ForCausalLM

    from rlfleet.rollout.model_init import write_model

    write_model(tmp_path, "tiny", seed=0)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    model = Qwen2ForCausalLM.from_pretrained(tmp_path)
    tasks = builtin_tasks()
    template = get_template(BUILTIN_TEMPLATE)
    ids = torch.tensor([tok.encode(template.render(t)).ids for t in tasks])  # [N, 4]
    digit_ids = [tok.token_to_id(d) for d in DIGITS]
    gold = torch.tensor([tok.token_to_id(gold_digit(t)) for t in tasks])  # [N]
    with torch.no_grad():
        probs = model(ids).logits[:, -1].softmax(-1)  # [N, V]
    p_gold = probs.gather(1, gold[:, None])[:, 0].tolist()
    p_digits = probs[:, digit_ids].sum(-1).tolist()
    chance = chance_reward(p_gold, p_digits)
    assert 0.001 < chance < 0.3, chance


def score(task: Task, completion: str, result: CaseResult) -> float | None:
    reward = RewardFunction(builtin_reward_config(), get_template(BUILTIN_TEMPLATE))
    return reward(
        RewardInput(
            text=completion,
            tokens=1,
            max_tokens=1,
            truncated=True,
            task_type=task.task_type,
            result=result,
        )
    ).total


@pytest.mark.timeout(180)
async def test_the_real_verifier_scores_exactly_the_gold_token(require_root: None) -> None:
    """Every token of the tiny vocabulary as the completion of one math and one code prompt,
    through the verifier engine with the local sandbox: only the gold digit is accepted (so
    the chance rate is p(gold)); rewards 1 for it, 0.1 for another digit, else 0."""
    from rlfleet.rollout.model_init import SHAPES, build_tokenizer
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    tok = build_tokenizer(SHAPES["tiny"].tokenizer_vocab)
    texts = sorted({tok.decode([i]) for i in range(tok.get_vocab_size())})
    engine = await Engine.start(EngineConfig(pool=PoolConfig(workers=2)))
    try:
        for task in (by_id("add-3-4"), by_id("sub-7-3")):
            accepted = []
            for n, text in enumerate(texts):
                result = await engine.verify(task.case_for(text, f"{task.id}/{n}"))
                assert result.verdict is not Verdict.SE, (text, result.message)
                if result.verdict is Verdict.AC:
                    accepted.append(text)
                    assert score(task, text, result) == pytest.approx(1.0)
                elif text in DIGITS:
                    assert result.verdict is Verdict.WA
                    assert score(task, text, result) == pytest.approx(0.1)
                else:
                    assert score(task, text, result) == 0.0
            assert accepted == [gold_digit(task)], task.id
    finally:
        await engine.close()
