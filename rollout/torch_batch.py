"""The decode batch: transformers' model code with this project's own generation loop.

Synchronous and torch-only (the engine runs it on its own thread). Sequences occupy rows
``0..n-1`` of a ``SlotCache``; ``add`` prefills new ones (right-padded, one forward for all
of them) and samples their first token, ``step`` decodes one token for every row, and
``remove`` drops rows and closes the gaps. Only the decoder stack and the output projection
are called, so a prefill computes logits for each prompt's last position alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rlfleet.rollout.engine import EngineError
from rlfleet.rollout.kv_cache import SlotCache, prefill_mask
from rlfleet.rollout.sampling import sample, scaled_logprobs, token_logprobs, uniforms_for_seed


@dataclass(frozen=True, kw_only=True)
class NewRow:
    prompt: Sequence[int]
    temperature: float
    top_p: float
    top_k: int
    seed: int
    max_new_tokens: int
    """Tokens this row may generate (already capped by the cache length)."""


# Decoders whose forward is exactly: embed, rotary embedding, the layers, a final norm. For
# these the loop calls the same modules itself, skipping the forward's wrappers (output
# capture, config defaults, mask checks): about 15 % of a decode step on a tiny model.
PLAIN_DECODERS = frozenset({"LlamaModel", "Qwen2Model", "Qwen3Model", "MistralModel"})


def forward_hidden(
    decoder: nn.Module,
    cache: SlotCache,
    input_ids: Tensor,
    position_ids: Tensor,
    mask: Tensor | None,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """input_ids, position_ids: [b, q]; mask: [b, 1, q, L] (bool, or additive float), or
    None for a prefill of a plain decoder (``is_plain``: causal from position 0);
    rotary: (cos, sin) for ``position_ids`` if already known -> hidden [b, q, H]"""
    if is_plain(decoder):
        return forward_layers(decoder, cache, input_ids, position_ids, mask, rotary)
    assert mask is not None, "only plain decoders take a prefill without a mask"
    out = decoder(
        input_ids=input_ids,
        position_ids=position_ids,
        # A 4D mask is taken as built: transformers' mask creation returns it as it is.
        attention_mask=mask,
        cache=cache,
        use_cache=True,
    )
    hidden: Tensor = out.last_hidden_state
    return hidden


def is_plain(decoder: nn.Module) -> bool:
    return type(decoder).__name__ in PLAIN_DECODERS


def forward_layers(
    decoder: Any,
    cache: SlotCache,
    input_ids: Tensor,
    position_ids: Tensor,
    mask: Tensor | None,
    rotary: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """``forward_hidden`` for ``PLAIN_DECODERS``, module by module (same numbers);
    ``decoder`` is one of those classes (typed loosely: its submodules are attributes)."""
    hidden = decoder.embed_tokens(input_ids)  # [b, q, H]
    if rotary is None:
        rotary = decoder.rotary_emb(hidden, position_ids)  # (cos, sin)
    for layer in decoder.layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rotary,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
    out: Tensor = decoder.norm(hidden)
    return out


DECODE_ATTENTION = "rlfleet_decode"
"""The attention implementation the decode batch sets on its model (``decode_attention``)."""


def decode_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' attention interface: its sdpa, except that a one-token decode step
    attends on the key/value heads directly, each query head grouped under the key/value
    head ``repeat_kv`` would give it (the kernel and numbers of transformers' sdpa in eager
    mode; under ``torch.compile`` transformers' own copies the keys and values once per
    query head, every step).

    query: [b, h, q, d]; key, value: [b, kv, L, d]; attention_mask: [b, 1, q, L] or None
    returns: [b, q, h, d], None
    """
    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or dropout > 0:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.reshape(b, kv_heads, heads // kv_heads, dim)  # [b, kv, h/kv, d]
    if torch.compiler.is_compiling() and query.device.type == "cpu" and attention_mask is not None:
        # Compiled on a CPU, plain products and sums fuse into two loops that beat sdpa's
        # blocked kernel on one query row per group (about 0.2 ms of a 1 ms step, batch 64).
        scale = dim**-0.5 if scaling is None else scaling
        scores = (grouped[:, :, :, None, :] * key[:, :, None]).sum(-1)  # [b, kv, h/kv, L]
        weights = torch.softmax(scores * scale + attention_mask, dim=-1)  # [b, kv, h/kv, L]
        out = (weights[..., None] * value[:, :, None]).sum(-2)  # [b, kv, h/kv, d]
        return out.reshape(b, 1, heads, dim), None
    out = F.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )  # [b, kv, h/kv, d]
    return out.reshape(b, 1, heads, dim), None


def decode_logits(
    decoder: nn.Module,
    head: nn.Module,
    cache: SlotCache,
    tokens: Tensor,
    positions: Tensor,
    mask: Tensor,
    rotary: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """One decode step up to the logits (what ``torch.compile`` compiles: no host-side
    choices in it). tokens, positions: [n]; mask: [n, 1, 1, L] -> logits [n, V]"""
    hidden = forward_hidden(
        decoder, cache, tokens[:, None], positions[:, None], mask, rotary
    )  # [n, 1, H]
    logits: Tensor = head(hidden[:, 0])
    return logits


def check_supported(model: PreTrainedModel) -> None:
    """The loop calls the decoder and the output projection itself: refuse models whose
    forward does more than that (logit scaling or soft-capping) or attends differently."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if set(layer_types) != {"full_attention"}:
        raise EngineError(
            f"{type(model).__name__}: layer types {sorted(set(layer_types))} are not supported "
            "by the torch engine (full attention only); use the sglang engine"
        )
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise EngineError(
                f"{type(model).__name__}: {name} is not supported by the torch engine; "
                "use the sglang engine"
            )


# RoPE variants whose cos/sin depend on the position alone (not on the sequence length):
# for these the table is computed once, by the model's own rotary module, and indexed.
STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})


class DecodeBatch:
    def __init__(
        self, model: PreTrainedModel, *, slots: int, max_len: int, compile: bool = False
    ) -> None:
        """``compile``: the decode step up to the logits goes through ``torch.compile``
        (compiled by ``warm_up``, or else on the first steps); sampling stays eager."""
        check_supported(model)
        if model.config._attn_implementation == "sdpa":  # (what decode_attention extends)
            AttentionInterface.register(DECODE_ATTENTION, decode_attention)
            model.set_attn_implementation(DECODE_ATTENTION)
        config = model.config.get_text_config()
        param = next(model.parameters())
        device = param.device
        self.decoder = model.base_model
        head = model.get_output_embeddings()
        assert isinstance(head, nn.Module)
        self.head = head
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.cache = SlotCache(
            layers=config.num_hidden_layers,
            slots=slots,
            kv_heads=config.num_key_value_heads,
            max_len=max_len,
            head_dim=head_dim,
            dtype=param.dtype,
            device=device,
        )
        self.slots = slots
        self.vocab_size: int = config.vocab_size
        self.max_len = max_len
        self.device = device
        self.n = 0
        # Per-row state, rows 0..n-1 live.
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)  # tokens in cache
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)  # fed at next step
        self.scale = torch.ones(slots, device=device)  # temperature, 1 for greedy
        self.top_p = torch.ones(slots, device=device)
        self.top_k = torch.zeros(slots, dtype=torch.long, device=device)
        # The uniform number for the token sampled while a row holds p tokens sits at
        # column p - 1 (the first, from the prefill, at prompt length - 1).
        self.uniforms = torch.zeros(slots, max_len, device=device)  # [slots, L]
        # Additive attention mask of the decode steps: 0 where a row has a token, -inf
        # elsewhere; one column opens per step instead of a mask built per step.
        self.bias = torch.full((slots, 1, 1, max_len), float("-inf"), dtype=param.dtype)
        self.bias = self.bias.to(device)  # [slots, 1, 1, L]
        # Host copies of what decides which work a step does (no device reads).
        self.lengths: list[int] = []  # positions[:n]
        self.temperatures: list[float] = []
        self.filtered: list[bool] = []  # rows that need top-k/top-p filtering
        self._rows = torch.arange(slots, device=device)
        self._rope: tuple[Tensor, Tensor] | None = None  # (cos, sin) [L, D], on first use
        self.compiled = compile
        self._logits = torch.compile(decode_logits, dynamic=True) if compile else decode_logits

    @property
    def free(self) -> int:
        return self.slots - self.n

    def add(self, rows: Sequence[NewRow]) -> tuple[Tensor, Tensor]:
        """Prefill ``rows`` into the next free rows and sample their first tokens.

        returns: tokens [m], logprobs [m] (rows n..n+m-1, in order)
        """
        m, start = len(rows), self.n
        assert 0 < m <= self.free
        width = max(len(r.prompt) for r in rows)
        assert width < self.max_len
        lengths_list = [len(r.prompt) for r in rows]
        lengths = torch.tensor(lengths_list, device=self.device)  # [m]
        new = slice(start, start + m)
        # Each distinct prompt is prefilled once (a group's n samples share theirs): into
        # the first rows, in order of first appearance, then its keys and values are copied
        # to the rows of its other samples.
        distinct: dict[tuple[int, ...], int] = {}
        source = [distinct.setdefault(tuple(r.prompt), len(distinct)) for r in rows]
        u = len(distinct)
        ids = torch.tensor(
            [[*p, *[0] * (width - len(p))] for p in distinct], device=self.device
        )  # [u, S] (right-padded)
        unique_lengths = torch.tensor([len(p) for p in distinct], device=self.device)  # [u]
        positions = torch.arange(width, device=self.device)[None, :].expand(u, width)  # [u, S]
        self.cache.for_prefill(start, u, width)
        # Plain decoders prefill with no mask: sdpa then attends causally (its is_causal
        # kernel, about twice as fast here as with a mask). That is exact for right-padded
        # rows: a prompt token's keys are all at or before it, inside the prompt; what the
        # padding computes is never read (see ``SlotCache.for_prefill``).
        mask = None if is_plain(self.decoder) else prefill_mask(unique_lengths, width)
        hidden = forward_hidden(self.decoder, self.cache, ids, positions, mask)  # [u, S, H]
        last = hidden[torch.arange(u, device=self.device), unique_lengths - 1]  # [u, H]
        logits = self.head(last)  # [u, V]
        if u < m:
            # (The gather reads every source row before any row is written.)
            src = torch.tensor(source, device=self.device)  # [m]
            self.cache.move(self._rows[new], start + src, width)
            logits = logits[src]  # [m, V]

        self.scale[new] = torch.tensor([r.temperature if r.temperature > 0 else 1.0 for r in rows])
        self.top_p[new] = torch.tensor([r.top_p for r in rows])
        self.top_k[new] = torch.tensor([r.top_k for r in rows])
        columns = torch.arange(self.max_len, device=self.device)  # [L]
        self.bias[new, 0, 0] = torch.where(columns < lengths[:, None], 0.0, float("-inf"))
        for i, r in enumerate(rows):
            n_prompt = len(r.prompt)
            self.uniforms[start + i, n_prompt - 1 : n_prompt - 1 + r.max_new_tokens] = (
                uniforms_for_seed(r.seed, r.max_new_tokens)
            )
        self.temperatures += [r.temperature for r in rows]
        self.filtered += [r.top_k > 0 or r.top_p < 1 for r in rows]
        tokens, logprobs = self._sample(
            logits, new, self.uniforms[new][self._rows[:m], lengths - 1]
        )
        self.positions[new] = lengths
        self.tokens[new] = tokens
        self.lengths += lengths_list
        self.n += m
        return tokens, logprobs

    def step(self) -> tuple[Tensor, Tensor]:
        """One token for every live row. returns: tokens [n], logprobs [n]"""
        n = self.n
        # A compiled step never runs on one row: torch.compile specialises a size of 1 (one
        # more compilation, tens of seconds on a CPU). A spare free row runs beside it; its
        # cache writes land in its own free slot and its logits are dropped.
        k = 2 if self.compiled and n == 1 and self.slots > 1 else n
        rows = self._rows[:k]  # [k]
        positions = self.positions[:k]  # [k]
        read_len = max(self.lengths) + 1
        self.cache.for_decode(rows, positions, read_len)
        self.bias[rows, 0, 0, positions] = 0  # each row's new token sees itself
        logits = self._logits(
            self.decoder,
            self.head,
            self.cache,
            self.tokens[:k],
            positions,
            self.bias[:k, :, :, :read_len],  # [k, 1, 1, L]
            self.rotary(positions),
        )[:n]  # [n, V]
        positions = positions[:n]
        tokens, logprobs = self._sample(logits, slice(0, n), self.uniforms[rows[:n], positions])
        positions.add_(1)
        self.tokens[:n] = tokens
        self.lengths = [length + 1 for length in self.lengths]
        return tokens, logprobs

    def warm_up(self) -> None:
        """Compile the decode step now, on an empty batch: a few steps of throwaway rows
        at two batch sizes, so that the graph compiled is the general one (any number of
        rows, any length) and serving compiles nothing. Without ``compile``: nothing."""
        assert self.n == 0
        if not self.compiled:
            return
        # Duck sizing off: torch.compile would otherwise take two sizes that happen to be
        # equal here (3 rows and 3 of something else) as always equal, and compile again
        # on the first step where they are not.
        from torch.fx.experimental import _config as fx_config

        with fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]
            prompt = max(1, min(3, self.max_len - 3))
            steps = min(2, self.max_len - 1 - prompt)
            for count in (min(3, self.slots), min(5, self.slots)):
                self.add(
                    [
                        NewRow(
                            prompt=[0] * prompt,
                            temperature=1.0,
                            top_p=1.0,
                            top_k=0,
                            seed=i,
                            max_new_tokens=steps + 1,
                        )
                        for i in range(count)
                    ]
                )
                for _ in range(steps):
                    self.step()
                self.remove(range(self.n))

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) [n, 1, D] for ``positions`` [n] from a table, where the model's RoPE
        allows one (None: the decoder computes them)."""
        rotary = getattr(self.decoder, "rotary_emb", None)
        if getattr(rotary, "rope_type", None) not in STATIC_ROPE:
            return None
        if self._rope is None:
            assert rotary is not None
            every = torch.arange(self.max_len, device=self.device)[None, :]  # [1, L]
            cos, sin = rotary(self.bias[:1, 0, 0], every)  # [1, L, D]
            self._rope = cos[0], sin[0]
        cos, sin = self._rope
        return cos[positions[:, None]], sin[positions[:, None]]

    def _sample(self, logits: Tensor, rows: slice, uniform: Tensor) -> tuple[Tensor, Tensor]:
        # logits: [b, V]; uniform: [b]
        temperatures = self.temperatures[rows]
        unscaled = all(t in (0, 1) for t in temperatures)
        logprobs = scaled_logprobs(logits, None if unscaled else self.scale[rows])  # [b, V]
        greedy: Tensor | bool = all(t == 0 for t in temperatures)
        if not greedy and 0 in temperatures:  # some greedy rows, some not
            greedy = torch.tensor([t == 0 for t in temperatures], device=self.device)
        tokens = sample(
            logprobs,
            greedy,
            self.top_k[rows],
            self.top_p[rows],
            uniform,
            filtered=any(self.filtered[rows]),
        )  # [b]
        return tokens, token_logprobs(logprobs, tokens)

    def remove(self, rows: Sequence[int]) -> list[tuple[int, int]]:
        """Drop ``rows``; live rows from the tail move into the gaps.

        returns: the moves made, (to, from) row pairs, for the caller's own row lists
        """
        gone = set(rows)
        keep_n = self.n - len(gone)
        holes = sorted(r for r in gone if r < keep_n)
        tail = [r for r in range(keep_n, self.n) if r not in gone]
        moves = list(zip(holes, tail, strict=True))
        if moves:
            dst = torch.tensor(holes, device=self.device)
            src = torch.tensor(tail, device=self.device)
            self.cache.move(dst, src, max(self.lengths[s] for s in tail))
            for t in (
                self.positions,
                self.tokens,
                self.scale,
                self.top_p,
                self.top_k,
                self.uniforms,
                self.bias,
            ):
                t[dst] = t[src]
            for d, s in moves:
                self.lengths[d] = self.lengths[s]
                self.temperatures[d] = self.temperatures[s]
                self.filtered[d] = self.filtered[s]
        del self.lengths[keep_n:], self.temperatures[keep_n:], self.filtered[keep_n:]
        self.n = keep_n
        return moves
