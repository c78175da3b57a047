"""The audio encoder run incrementally: each hop encodes only a stream's new columns, attending
to the cached keys and values of the columns before them.

The full-window engine re-encodes its whole context (10 s = 62 columns = 248 tokens) every
0.5 s hop although only ~3 columns are new: 20 audio-seconds of encoder work per stream-second.
Here a hop costs its new tokens only (~12.5 per 0.5 s hop), ~16x less, because every layer keeps,
per stream, the keys and values its earlier tokens produced:

    new tokens x (B, 4n, D) --block l--> queries of x attend to [cached K/V of layer l | K/V of x]
    final tokens -> MAP head keys/values, cached too, so the global embedding pools the whole
    context while projecting only the new tokens.

What changes against the full window: a cached token was computed when it was the newest, so it
never sees the audio that came after its own hop (block-causal attention). The newest columns,
the ones the detector scores (lookback 0), see the same left context in both modes; what differs
is that their left context was itself computed without right context. `main.py eval --stream`
measures the effect on every table; docs/capacity.md has the figures.

Positions: keys are cached *before* RoPE and rotated at every call with positions relative to the
cache's first column, so a stream can run for days without positions growing (q.k depends only on
column differences, so this equals rotating once with absolute positions).

One cache entry per token, a flat vector of ENTRY = (2 L + 2) D floats:
    [k_0 | v_0 | k_1 | v_1 | ... | k_{L-1} | v_{L-1} | map_k | map_v]   (k_i pre-rotation, heads major)
so a stream's cache is one contiguous (4c, ENTRY) array and a batch is one (B, 4T, ENTRY) tensor.

Shapes, with T cached columns (4T tokens) and n new columns:
    mel         (B, 64, 16 n)  the new columns' normalised log-mel
    new_valid   (B, n) bool    which new columns are real (streams in a batch differ in n)
    cache       (B, 4T, ENTRY) the cached tokens' entries, left padded
    cache_valid (B, T) bool    which cached columns are real (a stream's c columns are the last c)
Returns columns (B, n, E), global_emb (B, E) and new_cache (B, 4n, ENTRY), the new tokens' entries.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.frontend import FREQ_PATCHES
from encoder.model import AudioEncoder, Rotary


def entry_size(width: int, depth: int) -> int:
    """Floats per cached token: keys and values of every layer plus the MAP head's."""
    return (2 * depth + 2) * width


def token_grid(valid_columns: torch.Tensor, first_column: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """valid_columns: (B, C) bool -> pos_t, pos_f, valid: (B, 4C) per token, pos_t from first_column."""
    B, C = valid_columns.shape
    idx = torch.arange(C * FREQ_PATCHES, device=valid_columns.device)
    pos_t = (first_column + idx // FREQ_PATCHES)[None].expand(B, -1)
    pos_f = (idx % FREQ_PATCHES)[None].expand(B, -1)
    valid = valid_columns.repeat_interleave(FREQ_PATCHES, dim=1)
    return pos_t, pos_f, valid


class IncrementalEncoder(nn.Module):
    """One hop of the block-causal encoder over an `AudioEncoder`'s own weights (no new parameters)."""

    def __init__(self, audio: AudioEncoder):
        super().__init__()
        self.audio = audio
        self.half_window = audio.cfg.window_columns // 2

    def forward(
        self,
        mel: torch.Tensor,
        new_valid: torch.Tensor,
        cache: torch.Tensor,
        cache_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.audio
        T = cache_valid.shape[1]
        x = a.embed(mel)  # (B, 4n, D)
        B, N, D = x.shape
        H = a.blocks[0].attn.heads
        hd = D // H
        M = cache.shape[1]  # 4T
        past = cache.view(B, M, len(a.blocks) + 1, 2, H, hd).permute(2, 3, 0, 4, 1, 5)  # (L+1, 2, B, H, M, hd)
        qt, qf, q_valid = token_grid(new_valid, T)
        kt_c, kf_c, k_valid_c = token_grid(cache_valid, 0)
        kt, kf = torch.cat([kt_c, qt], 1), torch.cat([kf_c, qf], 1)
        k_valid = torch.cat([k_valid_c, q_valid], 1)  # (B, 4T + 4n)
        q_cos, q_sin = a.rotary.angles(qt, qf)
        k_cos, k_sin = a.rotary.angles(kt, kf)
        # A padding query attends to itself only, which keeps its (discarded) output finite.
        pad_self = (torch.arange(N, device=x.device)[:, None] + 4 * T == torch.arange(4 * T + N, device=x.device)[None])
        pad_self = pad_self[None] & ~q_valid[:, :, None]  # (B, N, 4T + N)
        global_mask = (k_valid[:, None, :] & q_valid[:, :, None]) | pad_self
        near = (qt[:, :, None] - kt[:, None, :]).abs() <= self.half_window
        local_mask = (global_mask & near) | pad_self
        new_k, new_v = [], []
        for i, block in enumerate(a.blocks):
            h = block.norm1(x)
            q, k, v = block.attn.qkv(h).view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
            new_k.append(k)
            new_v.append(v)
            keys = Rotary.rotate(torch.cat([past[i, 0], k], 2), k_cos, k_sin)
            values = torch.cat([past[i, 1], v], 2)
            mask = (local_mask if block.local else global_mask)[:, None]
            y = F.scaled_dot_product_attention(Rotary.rotate(q, q_cos, q_sin), keys, values, attn_mask=mask)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(B, N, D))
            x = x + block.mlp(block.norm2(x))
        tokens = a.norm(x)
        new_map = a.map_head.kv(tokens)  # (B, N, 2D)
        cached_map = past[-1].permute(1, 3, 0, 2, 4).reshape(B, M, 2 * D)  # (2, B, H, M, hd) -> (B, M, 2D)
        pooled = self.pool(torch.cat([cached_map, new_map], 1), k_valid)
        columns = tokens.view(B, N // FREQ_PATCHES, FREQ_PATCHES, D).mean(2)
        # (L, 2, B, H, N, hd) -> (B, N, L, 2, H, hd) -> (B, N, 2 L D), then the MAP head's (B, N, 2D)
        kv = torch.stack([torch.stack(new_k), torch.stack(new_v)], 1).permute(2, 4, 0, 1, 3, 5).reshape(B, N, -1)
        return a.dense_proj(columns), a.global_proj(pooled), torch.cat([kv, new_map], 2)

    def pool(self, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The MAP head from its keys | values: kv (B, M, 2D), valid (B, M) -> (B, D)."""
        head = self.audio.map_head
        B, M, D2 = kv.shape
        D = D2 // 2
        hd = D // head.heads
        k, v = kv.view(B, M, 2, head.heads, hd).permute(2, 0, 3, 1, 4)  # (B, H, M, hd)
        q = head.q(head.query).view(1, head.heads, 1, hd).expand(B, -1, -1, -1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])  # (B, H, 1, hd)
        y = head.proj(y.transpose(1, 2).reshape(B, D))
        return y + head.mlp(head.norm(y))
