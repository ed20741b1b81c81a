"""Prompt encoders of the real model: UMT5 (as Wan's pipeline runs it) and a random stand-in."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor


class UMT5PromptEncoder(torch.nn.Module):
    """Wan's text conditioning: UMT5 encoder states, zeroed past each prompt's length.

    Exactly diffusers' ``WanPipeline._get_t5_prompt_embeds`` (same cleaning, tokenisation to
    ``max_length`` and zero padding). Embeddings are cached per prompt text on the CPU, so a
    grid that reuses a prompt runs the encoder once.

    The encoder is deliberately *not* a registered submodule: ``model.to(device)`` must not
    move UMT5-XXL (about 11 GB in bf16) onto the GPU, where it would eat into the memory the
    KV cache is measured against. With ``offload`` it lives on the CPU and visits ``device``
    only while encoding.

    Args:
        tokenizer: a Hugging Face tokenizer (Wan: google/umt5-xxl's).
        encoder: a ``transformers.UMT5EncoderModel`` (or any encoder returning
            ``last_hidden_state``).
        max_length: tokens per prompt (Wan: 512).
        device: where the encoder runs.
        offload: keep the encoder on the CPU between prompts.
        dtype: dtype of the embeddings returned.
    """

    def __init__(self, tokenizer: Any, encoder: torch.nn.Module, max_length: int = 512,
                 device: str | torch.device = "cpu", offload: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tokenizer, self.max_length = tokenizer, max_length
        self.run_device, self.offload, self.dtype = torch.device(device), offload, dtype
        self._held = [encoder.eval().to("cpu" if offload else self.run_device)]
        self._cache: dict[str, Tensor] = {}

    @property
    def encoder(self) -> torch.nn.Module:
        return self._held[0]

    @torch.no_grad()
    def embed(self, texts: list[str]) -> Tensor:
        """Embeddings (B, max_length, d_model) of cleaned texts, computed now."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_length,
                                truncation=True, add_special_tokens=True,
                                return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids, tokens.attention_mask
        encoder = self.encoder.to(self.run_device) if self.offload else self.encoder
        try:
            out = encoder(ids.to(self.run_device), mask.to(self.run_device)).last_hidden_state
        finally:
            if self.offload:
                encoder.to("cpu")
        out = out.to(self.dtype) * mask.to(out.device, out.dtype)[..., None]  # zero the padding
        return out

    def forward(self, prompts: list[Any]) -> Tensor:
        """Embeddings (B, max_length, d_model) of prompts (non-strings are ``str``-ed)."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        texts = [prompt_clean(str(p)) for p in prompts]
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for text, row in zip(todo, self.embed(todo), strict=True):
                self._cache[text] = row.cpu()
        return torch.stack([self._cache[t] for t in texts]).to(self.run_device)


class RandomPromptEncoder(torch.nn.Module):
    """Stand-in for UMT5 when only sizes matter: seeded normal embeddings per prompt text.

    Used by ``weights=random`` (real-size accounting without downloads): the shapes, dtypes and
    cross-attention cost are those of the real model, the values mean nothing.

    Args:
        length: tokens per prompt (Wan: 512).
        dim: embedding width (Wan: 4096, UMT5-XXL's d_model).
        device: where the embeddings are returned.
        dtype: their dtype.
    """

    def __init__(self, length: int = 512, dim: int = 4096, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.length, self.dim = length, dim
        self.run_device, self.dtype = torch.device(device), dtype

    def forward(self, prompts: list[Any]) -> Tensor:
        rows = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "little")
            gen = torch.Generator().manual_seed(seed)
            rows.append(torch.randn(self.length, self.dim, generator=gen))
        return torch.stack(rows).to(self.run_device, self.dtype)
