"""The model side: the ``VideoModel`` protocol and its Wan implementation.

Any model the harness drives satisfies ``VideoModel``. ``WanCausalModel`` drives a diffusers
``WanTransformer3DModel`` (a tiny config or the 1.3B one) one block at a time, reading the
diffusers forward top to bottom but with positions chosen by the caller and self-attention
context chosen by the installed attention plan (``toolkit.core.attention``).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from torch import Tensor

from toolkit.core.attention import PlanSlot, install
from toolkit.core.rope import Rope, apply_rope
from toolkit.core.sampling import SamplerConfig
from toolkit.core.spec import ModelSpec

PREDICTIONS = ("flow", "x0")


@runtime_checkable
class VideoModel(Protocol):
    """What the rollout harness needs from a model."""

    spec: ModelSpec
    rope: Rope
    sampler: SamplerConfig
    vae: Any  # .encode(frames) -> latents, .decode(latents) -> frames; or None

    def encode_prompt(self, prompts: list[Any]) -> Tensor:
        """Conditioning (B, L, C) for a batch of prompts."""

    def attach(self) -> Any:
        """Context manager installing the attention path; yields a ``PlanSlot``."""

    def predict_x0(self, x: Tensor, sigma: float, pos: Tensor, cond: Tensor) -> Tensor:
        """Clean-latent prediction for a noisy block x (B, C, F, H, W) at token positions pos."""

    def fill(self, x0: Tensor, pos: Tensor, cond: Tensor) -> None:
        """Cache-fill pass: run the clean block at timestep 0 so the plan records its K/V."""

    def patch_embed(self, latents: Tensor) -> Tensor:
        """Tokens (B, N, width) of latents (B, C, F, H, W), the model's own patch embedding."""


class WanCausalModel(torch.nn.Module):
    """A ``WanTransformer3DModel`` sampled block by block.

    Args:
        transformer: the diffusers transformer.
        spec: its sizes (checked against the transformer's config).
        prompt_encoder: module mapping a list of prompts to embeddings (B, L, text_dim).
        vae: optional object with ``encode`` / ``decode``.
        prediction: what the transformer outputs, ``flow`` (velocity noise - x0) or ``x0``.
        sampler: the denoising schedule of one block.
    """

    def __init__(self, transformer: WanTransformer3DModel, spec: ModelSpec,
                 prompt_encoder: torch.nn.Module, vae: Any = None, prediction: str = "flow",
                 sampler: SamplerConfig | None = None) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r}: allowed {list(PREDICTIONS)}")
        cfg = transformer.config
        actual = (len(transformer.blocks), cfg.num_attention_heads, cfg.attention_head_dim,
                  cfg.in_channels, tuple(cfg.patch_size))
        wanted = (spec.num_layers, spec.num_heads, spec.head_dim, spec.latent_channels, spec.patch)
        if actual != wanted:
            raise ValueError(f"transformer config {actual} does not match spec {wanted} "
                             "(layers, heads, head_dim, channels, patch)")
        self.transformer, self.spec, self.prompt_encoder = transformer, spec, prompt_encoder
        self.vae, self.prediction = vae, prediction
        self.sampler = sampler or SamplerConfig()
        self.rope = Rope(spec)
        self._slot: PlanSlot | None = None
        self._dtype = transformer.dtype  # diffusers' dtype walks every module: read it once
        self._table: tuple[Tensor, Tensor] | None = None  # (pos, rotation table) of the block
        self._temb: dict[tuple, tuple[Tensor, Tensor]] = {}  # per timestep, within a rollout

    def _apply(self, fn, *args, **kwargs):  # .to() / .half(): keep the cached dtype true
        out = super()._apply(fn, *args, **kwargs)
        self._dtype = self.transformer.dtype
        self._table, self._temb = None, {}
        return out

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def encode_prompt(self, prompts: list[Any]) -> Tensor:
        """Prompt embeddings projected by the transformer's text embedder (computed once)."""
        raw = self.prompt_encoder(prompts).to(self.device)
        return self.transformer.condition_embedder.text_embedder(raw)

    @contextmanager
    def attach(self) -> Iterator[PlanSlot]:
        """Install rollbench's attention processors for the duration of a rollout."""
        with install(self.transformer) as slot:
            self._slot, self._table, self._temb = slot, None, {}
            try:
                yield slot
            finally:
                self._slot, self._table, self._temb = None, None, {}

    def forward_tokens(self, x: Tensor, timestep: Tensor, pos: Tensor, cond: Tensor,
                       project: bool = True, plan: Any = None) -> Tensor | None:
        """One pass of the Wan transformer over latents x (B, C, F, H, W).

        Self-attention goes through ``plan`` when given (it stays installed afterwards), else
        through the plan currently in the slot yielded by ``attach``.

        Args:
            timestep: (B,) or per token (B, N), in [0, 1000].
            pos: token positions (N, 3) for the rotary embedding.
            cond: projected prompt embeddings from ``encode_prompt``: (B, L, C) for every token,
                or (B, S, L, C), one prompt per equal consecutive segment of the tokens (e.g.
                one per block of a teacher-forced pass over a prompt schedule).
            project: False skips the output head (the cache-fill pass needs no output).
            plan: an attention plan for this pass (e.g. ``MaskedPlan(mask)`` in training).
        """
        if self._slot is None:
            raise RuntimeError("forward_tokens needs the processors installed: use model.attach()")
        if plan is not None:
            self._slot.plan = plan
        tf = self.transformer
        b, _, f, h, w = x.shape
        # 1. rotary table at the chosen positions (once per block), and patch embedding
        rotary = self._rotation(pos, x.device)
        tokens = tf.patch_embedding(x.to(self._dtype)).flatten(2).transpose(1, 2).contiguous()
        # 2. timestep embedding (per sample or per token), as WanTimeTextImageEmbedding
        temb, proj = self._time_embedding(timestep.to(x.device), b)
        # 3. transformer blocks
        for block in tf.blocks:
            tokens = block_forward(block, tokens, cond, proj, rotary)
        if not project:
            return None
        # 4. output norm with the final modulation, projection, unpatchify
        table = tf.scale_shift_table.to(temb.device)
        if temb.ndim == 3:
            shift, scale = (table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (table + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (tf.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        out = tf.proj_out(tokens)
        p_t, p_h, p_w = self.spec.patch
        out = out.reshape(b, f // p_t, h // p_h, w // p_w, p_t, p_h, p_w, -1)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _rotation(self, pos: Tensor, device: torch.device) -> Tensor:
        """The complex RoPE table of ``pos``; reused while the same ``pos`` comes back."""
        if self._table is None or self._table[0] is not pos:
            self._table = (pos, self.rope.table(pos).to(device))
        return self._table[1]

    def _time_embedding(self, timestep: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """(temb, timestep_proj) as WanTimeTextImageEmbedding computes them (dtypes included).

        Inside a rollout (processors attached, no autograd) each per-sample timestep is
        computed once and reused by every later block.
        """
        key = None
        if self._slot is not None and timestep.ndim == 1 and not torch.is_grad_enabled():
            key = (tuple(timestep.tolist()), batch, timestep.device)
            if key in self._temb:
                return self._temb[key]
        out = self._embed_time(timestep, batch)
        if key is not None:
            self._temb[key] = out
        return out

    def _embed_time(self, timestep: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        ce = self.transformer.condition_embedder
        t = ce.timesteps_proj(timestep.flatten())
        if timestep.ndim == 2:  # per-token timesteps (B, N)
            t = t.unflatten(0, (batch, -1))
        temb = ce.time_embedder(t.to(next(ce.time_embedder.parameters()).dtype))
        temb = temb.to(ce.time_proj.weight.dtype)
        proj = ce.time_proj(ce.act_fn(temb))
        return temb, proj.unflatten(proj.ndim - 1, (6, -1))

    def to_x0(self, out: Tensor, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Clean-latent estimate from the transformer output at noise level sigma."""
        return out if self.prediction == "x0" else x - sigma * out

    def predict_x0(self, x: Tensor, sigma: float, pos: Tensor, cond: Tensor) -> Tensor:
        timestep = torch.full((x.shape[0],), 1000.0 * sigma, device=x.device)
        out = self.forward_tokens(x, timestep, pos, cond)
        return self.to_x0(out.float(), x, sigma)

    def fill(self, x0: Tensor, pos: Tensor, cond: Tensor) -> None:
        timestep = torch.zeros((x0.shape[0],), device=x0.device)
        self.forward_tokens(x0, timestep, pos, cond, project=False)

    def patch_embed(self, latents: Tensor) -> Tensor:
        tf = self.transformer
        return tf.patch_embedding(latents.to(self._dtype)).flatten(2).transpose(1, 2)

    def token_kv(self, tokens: Tensor, pos: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """Cache-fill pass of hidden tokens: their per-layer K/V at timestep 0.

        ``tokens`` (B, M, width) stand in for a patch-embedded block (e.g. a compressor's
        output). They run through every transformer block at timestep 0, attending only to
        themselves (no cached context), with cross-attention to ``cond``.

        Returns:
            keys (L, B, H, M, D) rotated at ``pos`` (M, 3), and values (L, B, H, M, D).
        """
        if self._slot is None:  # outside a rollout: install the processors for this pass
            with self.attach():
                return self.token_kv(tokens, pos, cond)
        record = _RecordPlan(self.spec.num_layers)
        previous, self._slot.plan = self._slot.plan, record
        try:
            rotary = self.rope.table(pos).to(tokens.device)
            _, proj = self._time_embedding(torch.zeros(tokens.shape[0], device=tokens.device),
                                           tokens.shape[0])
            x = tokens.to(self._dtype)
            for block in self.transformer.blocks:
                x = block_forward(block, x, cond, proj, rotary)
        finally:
            self._slot.plan = previous
        return torch.stack(record.keys), torch.stack(record.values)

    def project_kv(self, tokens: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Each layer's self-attention K/V projection applied to the same hidden tokens.

        Per layer: the layer's pre-attention norm with its timestep-0 AdaLN modulation, then
        ``to_k`` + ``norm_k`` (rotated at ``pos``) and ``to_v``; the tokens are not carried
        through the layers (no attention, no feed-forward).

        Returns:
            keys (L, B, H, M, D) rotated at ``pos`` (M, 3), and values (L, B, H, M, D).
        """
        b = tokens.shape[0]
        cos, sin = self.rope.cos_sin(pos)
        cos, sin = cos.to(tokens.device), sin.to(tokens.device)
        _, proj = self._time_embedding(torch.zeros(b, device=tokens.device), b)
        x = tokens.to(self._dtype)
        keys, values = [], []
        for block in self.transformer.blocks:
            shift, scale = (block.scale_shift_table + proj.float()).chunk(6, dim=1)[:2]
            h = (block.norm1(x.float()) * (1 + scale) + shift).type_as(x)
            attn = block.attn1
            k = attn.norm_k(attn.to_k(h)).unflatten(2, (attn.heads, -1))  # (B, M, H, D)
            v = attn.to_v(h).unflatten(2, (attn.heads, -1))
            keys.append(apply_rope(k, cos, sin).transpose(1, 2))
            values.append(v.transpose(1, 2))
        return torch.stack(keys), torch.stack(values)

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.parameters())


class _Parts:
    """A ``WanTransformerBlock``'s submodules, looked up once (``ModuleList`` indexing and
    module-call dispatch cost more than the tiny models' arithmetic)."""

    def __init__(self, block: Any) -> None:
        self.table, self.attn1, self.attn2 = block.scale_shift_table, block.attn1, block.attn2
        self.eps1, self.eps3 = block.norm1.eps, block.norm3.eps
        self.norm2 = block.norm2
        net = list(block.ffn.net)
        if not 3 <= len(net) <= 4 or not isinstance(net[1], torch.nn.Dropout):
            raise ValueError(f"unexpected Wan feed-forward {block.ffn}")
        self.up, self.approximate, self.down = net[0].proj, net[0].approximate, net[2]
        self.drop = net[1] if net[1].p else None  # dropout after the activation
        self.final = net[3] if len(net) == 4 else None  # a final dropout, when configured


_PARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def block_forward(block: Any, x: Tensor, cond: Tensor, temb: Tensor, rotary: Tensor) -> Tensor:
    """``WanTransformerBlock.forward`` step by step (same ops, dtypes and order), calling the
    installed attention processors and the norms / feed-forward in functional form.

    Args:
        block: a diffusers ``WanTransformerBlock``.
        x: hidden tokens (B, N, width).
        cond: projected prompt embeddings (the cross-attention's ``encoder_hidden_states``).
        temb: timestep projection (B, 6, width), or per token (B, N, 6, width).
        rotary: the rotation the self-attention processor applies.
    """
    p = _PARTS.get(block)
    if p is None:
        p = _PARTS[block] = _Parts(block)
    if temb.ndim == 4:  # per-token timesteps: (B, N, 6, width)
        mod = [m.squeeze(2) for m in (p.table.unsqueeze(0) + _f32(temb)).chunk(6, dim=2)]
    else:
        mod = (p.table + _f32(temb)).chunk(6, dim=1)
    shift, scale, gate, c_shift, c_scale, c_gate = mod
    width, dtype = (x.shape[-1],), x.dtype
    # 1. self-attention
    h = _as(F.layer_norm(_f32(x), width, None, None, p.eps1) * (1 + scale) + shift, dtype)
    x = _as(_f32(x) + p.attn1.processor(p.attn1, h, None, None, rotary) * gate, dtype)
    # 2. cross-attention
    n2 = p.norm2
    h = _as(F.layer_norm(_f32(x), width, _f32(n2.weight), _f32(n2.bias), n2.eps)
            if isinstance(n2, torch.nn.LayerNorm) else n2(_f32(x)), dtype)
    x = x + p.attn2.processor(p.attn2, h, cond, None, None)
    # 3. feed-forward (diffusers' FeedForward: GELU(proj) -> dropout -> linear)
    h = _as(F.layer_norm(_f32(x), width, None, None, p.eps3) * (1 + c_scale) + c_shift, dtype)
    ff = F.gelu(F.linear(h, p.up.weight, p.up.bias), approximate=p.approximate)
    ff = F.linear(ff if p.drop is None else p.drop(ff), p.down.weight, p.down.bias)
    if p.final is not None:
        ff = p.final(ff)
    return _as(_f32(x) + _f32(ff) * c_gate, dtype)


def _f32(x: Tensor) -> Tensor:
    """``x.float()`` without a dispatcher call when it is already float32."""
    return x if x.dtype == torch.float32 else x.float()


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` without a dispatcher call when it already has it."""
    return x if x.dtype == dtype else x.to(dtype)


class _RecordPlan:
    """Attention plan of ``token_kv``: the tokens attend to themselves; K/V are recorded."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor] = [torch.empty(0)] * num_layers
        self.values: list[Tensor] = [torch.empty(0)] * num_layers

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        self.keys[layer], self.values[layer] = k, v
        return F.scaled_dot_product_attention(q, k, v)
