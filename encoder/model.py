"""The SLAP audio encoder: a ViT over 16x16 log-mel patches, read top to bottom.

RMSNorm -> Rotary (axial 2D RoPE) -> Attention (local or global, one mask) -> SwiGLU
-> Block -> MAPHead -> EncoderConfig -> AudioEncoder.

Every layer runs over a token grid described by three integer tensors of shape (B, N):
`pos_t` (time column), `pos_f` (frequency band) and `seg` (which clip a token belongs to
within its row; -1 = padding). Padded batches use one clip per row (seg 0); packed
batches put several clips in a row and attention never crosses `seg`. The same code
runs both, which is why packed and padded outputs agree.

A fourth, optional tensor `hop` (B, N) makes attention block-causal, the streaming engine's
view (encoder/incremental.py): a token attends only to tokens of its own hop or earlier ones,
so the whole-window pass computes what the hop-by-hop encoder computes, and training can
teach the streamed path (encoder/stream_tune.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.frontend import FREQ_PATCHES, N_MELS, PATCH_DIM, PATCH_FRAMES, PATCH_MELS


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """Axial 2D RoPE: the first half of each head's dims rotate with the time column, the
    second half with the frequency band, so q.k depends only on (dt, df)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 4 == 0, "2D RoPE needs head_dim divisible by 4"
        quarter = head_dim // 4  # rotation pairs per axis
        inv_freq = base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def angles(self, pos_t: torch.Tensor, pos_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos_*: (B, N) int -> cos, sin: (B, 1, N, head_dim // 2)."""
        at = pos_t.float()[..., None] * self.inv_freq  # (B, N, hd/4)
        af = pos_f.float()[..., None] * self.inv_freq  # (B, N, hd/4)
        ang = torch.cat([at, af], dim=-1)[:, None]  # (B, 1, N, hd/2)
        return ang.cos(), ang.sin()

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (B, H, N, hd); pairs (x[2i], x[2i+1]) rotate by the angle i."""
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, N, hd/2)
        r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        return torch.stack([r1, r2], dim=-1).flatten(-2)  # (B, H, N, hd)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D); mask: (B, 1, N, N) bool, True = may attend."""
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
        q, k = Rotary.rotate(q, *rope), Rotary.rotate(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(width, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int, local: bool):
        super().__init__()
        self.local = local  # which of the two masks this block uses
        self.norm1, self.norm2 = RMSNorm(width), RMSNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = SwiGLU(width, mlp_hidden)

    def forward(self, x: torch.Tensor, rope, local_mask: torch.Tensor, global_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, local_mask if self.local else global_mask)
        return x + self.mlp(self.norm2(x))


class MAPHead(nn.Module):
    """Multi-head attention pooling: one learned query attends over a clip's tokens, then a
    residual SwiGLU. Permutation invariant by construction (no positions in the pooling)."""

    def __init__(self, width: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(width) * 0.02)
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm = RMSNorm(width)
        self.mlp = SwiGLU(width, mlp_hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
        """x: (B, N, D) tokens, seg: (B, N) clip index per token (-1 pad). Returns (B, n_seg, D)."""
        B, N, D = x.shape
        hd = D // self.heads
        q = self.q(self.query).view(1, self.heads, 1, hd).expand(B, -1, n_seg, -1)  # (B, H, S, hd)
        k, v = self.kv(x).view(B, N, 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
        ids = torch.arange(n_seg, device=x.device)
        mask = (seg[:, None, :] == ids[None, :, None])[:, None]  # (B, 1, S, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, hd)
        y = self.proj(y.transpose(1, 2).reshape(B, n_seg, D))
        return y + self.mlp(self.norm(y))


@dataclass
class EncoderConfig:
    width: int = 256
    depth: int = 6
    heads: int = 4
    mlp_hidden: int = 704  # SwiGLU: ~8/3 * width keeps the MLP's parameters at 4x-MLP level, rounded to 64
    pattern: str = "LLG"  # repeated over depth: L = sliding-window block, G = global block
    # Local window in time columns (160 ms each): a token sees columns within +-window_columns // 2.
    # The paper's "24 frames" read as 24 tokens = 6 columns (~1 s); the other reading is 24 columns.
    window_columns: int = 6
    embed_dim: int = 256  # joint audio-text space
    rope_base: float = 10000.0
    max_seconds: float = 30.0  # the paper's longest clip; the engine's max context must not exceed it

    def is_local(self, layer: int) -> bool:
        return self.pattern[layer % len(self.pattern)] == "L"


@dataclass
class AudioOutput:
    tokens: torch.Tensor  # (B, N, D) final-norm tokens before the MAP head
    token_valid: torch.Tensor  # (B, N) bool
    columns: torch.Tensor  # (B, C, E) dense features per 160 ms column, in the joint space
    column_valid: torch.Tensor  # (B, C) bool
    global_emb: torch.Tensor  # (B, E) MAP-pooled clip embedding, in the joint space


def patchify(mel: torch.Tensor) -> torch.Tensor:
    """mel: (B, 64, T) -> (B, C * 4, 256), the same layout as encoder.frontend.patchify."""
    B, n_mels, T = mel.shape
    C = T // PATCH_FRAMES
    x = mel[:, :, : C * PATCH_FRAMES].reshape(B, FREQ_PATCHES, PATCH_MELS, C, PATCH_FRAMES)
    return x.permute(0, 3, 1, 2, 4).reshape(B, C * FREQ_PATCHES, PATCH_DIM)  # (B, C, F, 16, 16) -> tokens


def attention_masks(pos_t: torch.Tensor, seg: torch.Tensor, window_columns: int,
                    hop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (B, 1, N, N) for global and local blocks.

    A token attends within its own clip (same seg, not padding); local blocks further limit
    it to columns within +-window_columns // 2. With `hop` (B, N), the hop that first encodes
    each token's column, a token also never attends to a later hop's tokens. Padding queries
    attend to themselves only, which keeps their (discarded) outputs finite.
    """
    valid = seg >= 0
    same = (seg[:, :, None] == seg[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, N, N)
    if hop is not None:
        same = same & (hop[:, None, :] <= hop[:, :, None])
    idx = torch.arange(seg.shape[1], device=seg.device)
    pad_self = (idx[:, None] == idx[None, :])[None] & ~valid[:, :, None]  # not torch.eye: ONNX has no bool EyeLike
    near = (pos_t[:, :, None] - pos_t[:, None, :]).abs() <= window_columns // 2
    return (same | pad_self)[:, None], ((same & near) | pad_self)[:, None]


class AudioEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        assert cfg.width % cfg.heads == 0
        self.cfg = cfg
        self.patch_embed = nn.Linear(PATCH_DIM, cfg.width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(cfg.width))  # replaces hidden patches (masked prediction)
        self.rotary = Rotary(cfg.width // cfg.heads, cfg.rope_base)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_hidden, cfg.is_local(i)) for i in range(cfg.depth)
        )
        self.norm = RMSNorm(cfg.width)
        self.map_head = MAPHead(cfg.width, cfg.heads, cfg.mlp_hidden)
        self.global_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.dense_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)

    # -- grid bookkeeping ---------------------------------------------------------------
    @staticmethod
    def grid(lengths: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """lengths: (B,) frames -> pos_t, pos_f, seg: (B, N) for a padded batch (one clip a row)."""
        idx = torch.arange(n_tokens, device=lengths.device)
        pos_t = (idx // FREQ_PATCHES)[None].expand(lengths.shape[0], -1)
        pos_f = (idx % FREQ_PATCHES)[None].expand(lengths.shape[0], -1)
        valid = idx[None] < (lengths[:, None] // PATCH_FRAMES) * FREQ_PATCHES
        seg = torch.where(valid, 0, -1)
        return pos_t, pos_f, seg

    def embed(self, mel: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """mel: (B, 64, T) -> (B, N, D); token_mask (B, N) bool marks patches hidden from the student."""
        assert mel.shape[1] == N_MELS, f"expected {N_MELS} mel bins, got {mel.shape[1]}"
        x = self.patch_embed(patchify(mel))
        if token_mask is not None:
            x = torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
        return x

    def trunk(self, x: torch.Tensor, pos_t: torch.Tensor, pos_f: torch.Tensor, seg: torch.Tensor,
              hop: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer over a token grid: x (B, N, D) -> (B, N, D) after the final norm;
        hop (B, N) or None: block-causal attention by hop (`attention_masks`)."""
        rope = self.rotary.angles(pos_t, pos_f)
        global_mask, local_mask = attention_masks(pos_t, seg, self.cfg.window_columns, hop)
        for block in self.blocks:
            x = block(x, rope, local_mask, global_mask)
        return self.norm(x)

    def heads_out(self, tokens: torch.Tensor, valid: torch.Tensor, pooled: torch.Tensor) -> AudioOutput:
        """Dense columns (mean of each column's 4 tokens) and the projected global embedding."""
        B, N, D = tokens.shape
        columns = tokens.view(B, N // FREQ_PATCHES, FREQ_PATCHES, D).mean(2)  # (B, C, D)
        return AudioOutput(
            tokens=tokens,
            token_valid=valid,
            columns=self.dense_proj(columns),
            column_valid=valid[:, ::FREQ_PATCHES],
            global_emb=self.global_proj(pooled),
        )

    # -- padded execution (inference, export) -----------------------------------------
    def forward(self, mel: torch.Tensor, lengths: torch.Tensor, token_mask: torch.Tensor | None = None,
                column_hop: torch.Tensor | None = None) -> AudioOutput:
        """mel: (B, 64, T) float32 normalised log-mel, lengths: (B,) valid frames per clip;
        column_hop (B, T // 16) int or None: the hop that first encodes each column, for the
        streaming engine's block-causal view (None: every token sees the whole clip)."""
        x = self.embed(mel, token_mask)
        pos_t, pos_f, seg = self.grid(lengths, x.shape[1])
        hop = None if column_hop is None else column_hop.repeat_interleave(FREQ_PATCHES, dim=1)
        tokens = self.trunk(x, pos_t, pos_f, seg, hop)
        pooled = self.map_head(tokens, seg, 1)[:, 0]  # (B, D)
        return self.heads_out(tokens, seg >= 0, pooled)

    # -- packed execution (training) ---------------------------------------------------
    def forward_packed(
        self, mel: torch.Tensor, lengths: torch.Tensor, token_mask: torch.Tensor | None = None, row_tokens: int = 1024,
        column_hop: torch.Tensor | None = None,
    ) -> AudioOutput:
        """Same inputs and outputs as `forward`, but the clips' valid tokens are packed into rows
        of `row_tokens` (first-fit decreasing) so no compute is spent on padding."""
        x = self.embed(mel, token_mask)
        B, N, D = x.shape
        pos_t, pos_f, seg = self.grid(lengths, N)
        valid = seg >= 0
        plan = pack_plan(valid.sum(1).tolist(), max(row_tokens, N))
        dest = plan.token_index.to(x.device)  # (n_valid,) flat positions in the packed (R * L) grid
        xp = x.new_zeros(plan.rows * plan.row_len, D)
        xp[dest] = x[valid]
        tp, fp = torch.zeros_like(xp[:, 0], dtype=torch.long), torch.zeros_like(xp[:, 0], dtype=torch.long)
        sp = torch.full_like(tp, -1)
        tp[dest], fp[dest], sp[dest] = pos_t[valid], pos_f[valid], plan.token_seg.to(x.device)
        shape = (plan.rows, plan.row_len)
        hp = None
        if column_hop is not None:  # hops compare only within a segment, so packing keeps them
            hp = torch.zeros_like(tp)
            hp[dest] = column_hop.repeat_interleave(FREQ_PATCHES, dim=1)[valid]
            hp = hp.view(shape)
        tokens_p = self.trunk(xp.view(*shape, D), tp.view(shape), fp.view(shape), sp.view(shape), hp)
        pooled_p = self.map_head(tokens_p, sp.view(shape), plan.max_segments)  # (R, S, D)
        tokens = x.new_zeros(B, N, D)
        tokens[valid] = tokens_p.reshape(-1, D)[dest]
        pooled = pooled_p[plan.clip_row.to(x.device), plan.clip_seg.to(x.device)]  # (B, D)
        return self.heads_out(tokens, valid, pooled)


@dataclass
class PackPlan:
    rows: int
    row_len: int
    max_segments: int
    clip_row: torch.Tensor  # (B,) row of each clip
    clip_seg: torch.Tensor  # (B,) segment index of each clip within its row
    token_index: torch.Tensor  # (n_valid,) flat packed position of each valid token, clip-major
    token_seg: torch.Tensor  # (n_valid,) segment index of each valid token


def pack_plan(n_tokens: list[int], row_len: int) -> PackPlan:
    """First-fit decreasing bin packing of clips (n_tokens each) into rows of row_len tokens."""
    order = sorted(range(len(n_tokens)), key=lambda i: -n_tokens[i])
    fill: list[int] = []
    segs: list[int] = []
    clip_row, clip_seg, clip_off = [0] * len(n_tokens), [0] * len(n_tokens), [0] * len(n_tokens)
    for i in order:
        r = next((r for r, f in enumerate(fill) if f + n_tokens[i] <= row_len), None)
        if r is None:
            fill.append(0)
            segs.append(0)
            r = len(fill) - 1
        clip_row[i], clip_seg[i], clip_off[i] = r, segs[r], fill[r]
        fill[r] += n_tokens[i]
        segs[r] += 1
    token_index = [clip_row[i] * row_len + clip_off[i] + j for i in range(len(n_tokens)) for j in range(n_tokens[i])]
    token_seg = [clip_seg[i] for i in range(len(n_tokens)) for _ in range(n_tokens[i])]
    return PackPlan(
        rows=max(len(fill), 1),
        row_len=row_len,
        max_segments=max(segs, default=1),
        clip_row=torch.tensor(clip_row),
        clip_seg=torch.tensor(clip_seg),
        token_index=torch.tensor(token_index, dtype=torch.long),
        token_seg=torch.tensor(token_seg, dtype=torch.long),
    )


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
