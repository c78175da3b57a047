"""Caption decoder: a small pre-norm transformer that writes a caption while cross-attending to
the audio encoder's dense (pre-MAP) tokens. It gives the L_CAP term of the SLAP objective.

RMSNorm -> SwiGLU -> SelfAttention (causal) -> CrossAttention (memory padding mask) -> Block
-> DecoderConfig -> CaptionDecoder.

Tokens come from the text tower's tokenizer (encoder/text.py): [CLS] is BOS, [SEP] is EOS and
[PAD] pads on the right. Right padding needs no mask here: causal attention means a real
token never sees the padding after it, and the loss ignores padded targets.
As in the audio encoder: RMSNorm pre-norm, no bias in any linear layer, SwiGLU MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.model import RMSNorm, SwiGLU  # the audio encoder's: one definition of each


class SelfAttention(nn.Module):
    """Causal multi-head self-attention over the caption tokens."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, D); position t sees positions <= t."""
        B, L, D = x.shape
        hd = D // self.heads
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class CrossAttention(nn.Module):
    """Caption tokens (queries) attend to the valid audio memory tokens (keys and values)."""

    def __init__(self, width: int, memory_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); memory: (B, N, Dm); memory_valid: (B, N) bool, True = real token.

        Every row needs at least one valid memory token (an all-False row gives NaN).
        """
        B, L, D = x.shape
        N = memory.shape[1]
        hd = D // self.heads
        q = self.q(x).view(B, L, self.heads, hd).transpose(1, 2)  # (B, H, L, hd)
        k, v = self.kv(memory).view(B, N, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd) each
        mask = memory_valid[:, None, None, :]  # (B, 1, 1, N), broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class Block(nn.Module):
    def __init__(self, width: int, memory_dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = RMSNorm(width), RMSNorm(width), RMSNorm(width)
        self.self_attn = SelfAttention(width, heads)
        self.cross_attn = CrossAttention(width, memory_dim, heads)
        self.mlp = SwiGLU(width, mlp_hidden)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), memory, memory_valid)
        return x + self.mlp(self.norm3(x))


@dataclass
class DecoderConfig:
    width: int = 256  # small on purpose: the paper's 8x512 decoder is for 109 M pairs, ours is for CPU
    depth: int = 2
    heads: int = 4  # 64 dims per head
    mlp_hidden: int = 704  # SwiGLU: ~8/3 * width keeps the MLP's parameters at 4x-MLP level, rounded to 64
    vocab_size: int = 30522  # the text tower's tokenizer (all-MiniLM-L6-v2, uncased WordPiece)
    max_len: int = 32  # caption tokens incl. BOS/EOS; as TextConfig.max_len, so one tokenization serves both


class CaptionDecoder(nn.Module):
    """Teacher-forced caption logits from caption tokens and audio memory."""

    def __init__(self, cfg: DecoderConfig, memory_dim: int):
        super().__init__()
        assert cfg.width % cfg.heads == 0, f"heads={cfg.heads} must divide width={cfg.width}"
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.max_len, cfg.width))
        # The memory comes from another model (encoder tokens or projected columns): normalise its scale.
        self.memory_norm = RMSNorm(memory_dim)
        self.blocks = nn.ModuleList(
            Block(cfg.width, memory_dim, cfg.heads, cfg.mlp_hidden) for _ in range(cfg.depth)
        )
        self.norm = RMSNorm(cfg.width)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        for name, p in self.blocks.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                # residual-branch outputs: scaled so the residual stream's variance does not grow with depth
                nn.init.normal_(p, std=0.02 / (2 * self.cfg.depth) ** 0.5)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor, memory_valid: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) int64 with L <= max_len, BOS first; memory: (B, N, Dm) float32;
        memory_valid: (B, N) bool, True = real memory token. Returns logits (B, L, vocab_size);
        logits[:, t] predict ids[:, t + 1] and depend only on ids[:, :t + 1]."""
        L = ids.shape[1]
        assert L <= self.cfg.max_len, f"{L} tokens > max_len {self.cfg.max_len}"
        x = self.tok_emb(ids) + self.pos_emb[:L]  # (B, L, D)
        memory = self.memory_norm(memory)
        for block in self.blocks:
            x = block(x, memory, memory_valid)
        return self.norm(x) @ self.tok_emb.weight.T  # (B, L, V), output projection tied to the embedding

    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        memory_valid: torch.Tensor,
        bos_id: int,
        eos_id: int,
        max_len: int | None = None,
        pad_id: int = 0,
    ) -> torch.Tensor:
        """Greedy decoding, for inspection (no KV cache: recomputes the prefix each step).

        memory: (B, N, Dm); memory_valid: (B, N) bool. Returns ids (B, T) int64, T <= max_len
        (default cfg.max_len): BOS, the caption, EOS, then pad_id after a row's EOS.
        """
        max_len = min(max_len or self.cfg.max_len, self.cfg.max_len)
        B = memory.shape[0]
        ids = torch.full((B, 1), bos_id, dtype=torch.int64, device=memory.device)  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=memory.device)  # (B,)
        while ids.shape[1] < max_len and not done.all():
            next_id = self(ids, memory, memory_valid)[:, -1].argmax(dim=-1)  # (B,)
            next_id = torch.where(done, torch.full_like(next_id, pad_id), next_id)
            ids = torch.cat([ids, next_id[:, None]], dim=1)  # (B, t + 1)
            done |= next_id == eos_id
        return ids
