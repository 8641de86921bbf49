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
from transformers import PreTrainedModel

from rlfleet.rollout.engine import EngineError
from rlfleet.rollout.kv_cache import SlotCache, decode_mask, prefill_mask
from rlfleet.rollout.sampling import logits_to_logprobs, sample, token_logprobs, uniforms_for_seed


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
    decoder: nn.Module, cache: SlotCache, input_ids: Tensor, position_ids: Tensor, mask: Tensor
) -> Tensor:
    """input_ids, position_ids: [b, q]; mask: [b, 1, q, L] bool -> hidden [b, q, H]"""
    if type(decoder).__name__ in PLAIN_DECODERS:
        return forward_layers(decoder, cache, input_ids, position_ids, mask)
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


def forward_layers(
    decoder: Any, cache: SlotCache, input_ids: Tensor, position_ids: Tensor, mask: Tensor
) -> Tensor:
    """``forward_hidden`` for ``PLAIN_DECODERS``, module by module (same numbers);
    ``decoder`` is one of those classes (typed loosely: its submodules are attributes)."""
    hidden = decoder.embed_tokens(input_ids)  # [b, q, H]
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


class DecodeBatch:
    def __init__(self, model: PreTrainedModel, *, slots: int, max_len: int) -> None:
        check_supported(model)
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
        self.steps = torch.zeros(slots, dtype=torch.long, device=device)  # tokens generated
        self.temperature = torch.zeros(slots, device=device)
        self.top_p = torch.ones(slots, device=device)
        self.top_k = torch.zeros(slots, dtype=torch.long, device=device)
        self.uniforms = torch.zeros(slots, max_len, device=device)  # one per step
        self.lengths: list[int] = []  # host copy of positions[:n]
        self.filtered: list[bool] = []  # rows that need top-k/top-p filtering
        self._rows = torch.arange(slots, device=device)

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
        ids = torch.zeros(m, width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r.prompt)] = torch.tensor(r.prompt, dtype=torch.long)
        ids = ids.to(self.device)  # [m, S]
        lengths = torch.tensor([len(r.prompt) for r in rows], device=self.device)  # [m]
        positions = torch.arange(width, device=self.device)[None, :].expand(m, width)  # [m, S]
        new = slice(start, start + m)
        self.cache.for_prefill(start, m, width)
        hidden = forward_hidden(
            self.decoder, self.cache, ids, positions, prefill_mask(lengths, width)
        )  # [m, S, H]
        last = hidden[torch.arange(m, device=self.device), lengths - 1]  # [m, H]
        logits = self.head(last)  # [m, V]

        self.temperature[new] = torch.tensor([r.temperature for r in rows])
        self.top_p[new] = torch.tensor([r.top_p for r in rows])
        self.top_k[new] = torch.tensor([r.top_k for r in rows])
        for i, r in enumerate(rows):
            self.uniforms[start + i, : r.max_new_tokens] = uniforms_for_seed(
                r.seed, r.max_new_tokens
            )
        self.filtered += [r.top_k > 0 or r.top_p < 1 for r in rows]
        tokens, logprobs = self._sample(logits, new, self.uniforms[new, 0])
        self.positions[new] = lengths
        self.steps[new] = 1
        self.tokens[new] = tokens
        self.lengths += [len(r.prompt) for r in rows]
        self.n += m
        return tokens, logprobs

    def step(self) -> tuple[Tensor, Tensor]:
        """One token for every live row. returns: tokens [n], logprobs [n]"""
        n = self.n
        live = slice(0, n)
        positions = self.positions[live]  # [n]
        read_len = max(self.lengths) + 1
        self.cache.for_decode(n, positions, read_len)
        hidden = forward_hidden(
            self.decoder,
            self.cache,
            self.tokens[live, None],  # [n, 1]
            positions[:, None],  # [n, 1]
            decode_mask(positions, read_len),  # [n, 1, 1, L]
        )  # [n, 1, H]
        logits = self.head(hidden[:, 0])  # [n, V]
        uniform = self.uniforms[self._rows[:n], self.steps[live]]  # [n]
        tokens, logprobs = self._sample(logits, live, uniform)
        self.positions[live] += 1
        self.steps[live] += 1
        self.tokens[live] = tokens
        self.lengths = [length + 1 for length in self.lengths]
        return tokens, logprobs

    def _sample(self, logits: Tensor, rows: slice, uniform: Tensor) -> tuple[Tensor, Tensor]:
        # logits: [b, V]; uniform: [b]
        temperature = self.temperature[rows]
        logprobs = logits_to_logprobs(logits, temperature)  # [b, V]
        tokens = sample(
            logprobs,
            temperature,
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
                self.steps,
                self.temperature,
                self.top_p,
                self.top_k,
                self.uniforms,
            ):
                t[dst] = t[src]
            for d, s in moves:
                self.lengths[d] = self.lengths[s]
                self.filtered[d] = self.filtered[s]
        del self.lengths[keep_n:], self.filtered[keep_n:]
        self.n = keep_n
        return moves
