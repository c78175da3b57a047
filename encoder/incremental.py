"""The audio encoder run incrementally: each hop encodes only a stream's new columns, attending
to the cached keys and values of the columns before them.

The full-window engine re-encodes its whole context (10 s = 62 columns = 248 tokens) every
0.5 s hop although only ~3 columns are new: 20 audio-seconds of encoder work per stream-second.
Here a hop costs its new tokens only (~12.5 per 0.5 s hop), because every layer keeps, per
stream, the keys and values its earlier tokens produced:

    new tokens x (B, 4n, D) --block l--> queries of x attend to [cached K/V of layer l | K/V of x]
    final tokens -> MAP head keys/values, cached too, so the global embedding pools the whole
    context while projecting only the new tokens.

What changes against the full window: a cached token was computed when it was the newest, so it
never sees the audio that came after its own hop (block-causal attention). The newest columns,
the ones the detector scores (lookback 0), see the same left context in both modes; what differs
is that their left context was itself computed without right context. `main.py eval --variants`
measures the effect on every table; docs/capacity.md has the figures.

Two caches per stream, because a local (sliding-window) block only ever looks back
`window_columns // 2` columns while a global block and the MAP head look at the whole context:
    local   the local blocks' keys | values of the newest `local_columns` columns, one flat entry
            per token (blocks in layer order, each [k (heads major) | v]): (B, 4W, 2 D x local blocks)
    global  the global blocks' and the MAP head's keys and values, whole context, head major:
            (B, G, 2, H, 4T, hd) with G = global blocks + 1 (the MAP head last)
The global cache is read where it lies: attention against it is computed apart from attention
among the new tokens and the two are joined in one softmax, so no per-hop copy of the context's
keys and values is made inside the graph (a Concat of past and new keys cost 40 % of a hop).

Keys are cached after RoPE. The rotation angles of the new tokens come in as inputs (`rope_cos`,
`rope_sin`), computed by the caller in float64 from the stream's column number modulo 2 pi
(encoder.runtime.stream_cache.rope_angles), so positions can grow for days without losing
precision; q.k depends only on column differences, so any origin gives the same attention.

Shapes, with T cached columns (4T tokens), W <= local_columns cached local columns, n new columns,
hd = D / heads:
    mel           (B, 64, 16 n)   the new columns' normalised log-mel
    new_valid     (B, n) bool     which new columns are real (streams in a batch differ in n)
    rope_cos/sin  (B, 4n, hd / 2) the new tokens' rotation (time angles | frequency angles)
    past_local    (B, 4W, 2 D x local blocks)  left padded
    local_valid   (B, W) bool
    past_global   (B, G, 2, H, 4T, hd)         left padded
    global_valid  (B, T) bool
Returns columns (B, n, E), global_emb (B, E), new_local (B, 4n, 2 D x local blocks) and
new_global (B, G, 2, H, 4n, hd): the new tokens' entries for both caches.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder.frontend import FREQ_PATCHES
from encoder.model import AudioEncoder, Rotary


def cache_layout(audio: AudioEncoder) -> tuple[list[int], list[int]]:
    """(local block indices, global block indices) in layer order."""
    local = [i for i, b in enumerate(audio.blocks) if b.local]
    return local, [i for i in range(len(audio.blocks)) if i not in local]


def entry_sizes(width: int, depth: int, pattern: str) -> tuple[int, int]:
    """(floats per token of the local cache, global cache groups G = global blocks + the MAP head)."""
    n_local = sum(1 for i in range(depth) if pattern[i % len(pattern)] == "L")
    return 2 * width * n_local, depth - n_local + 1


def attend_past(q: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention of q over [past keys | new keys] without concatenating the keys.

    q, k, v: (B, H, N, hd); past_k, past_v: (B, H, M, hd); mask: (B, 1, N, M + N) bool.
    Equals scaled_dot_product_attention(q, cat(past_k, k), cat(past_v, v), mask)."""
    M = past_k.shape[2]
    scale = q.shape[-1] ** -0.5
    scores = torch.cat([q @ past_k.transpose(-1, -2), q @ k.transpose(-1, -2)], -1) * scale  # (B, H, N, M + N)
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    return p[..., :M] @ past_v + p[..., M:] @ v


def local_columns(window_columns: int) -> int:
    """Columns a local block looks back: the +-window_columns // 2 neighbourhood's left half."""
    return window_columns // 2


class IncrementalEncoder(nn.Module):
    """One hop of the block-causal encoder over an `AudioEncoder`'s own weights (no new parameters)."""

    def __init__(self, audio: AudioEncoder):
        super().__init__()
        self.audio = audio
        self.half_window = local_columns(audio.cfg.window_columns)
        self.local_blocks, self.global_blocks = cache_layout(audio)

    def forward(
        self,
        mel: torch.Tensor,
        new_valid: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        past_local: torch.Tensor,
        local_valid: torch.Tensor,
        past_global: torch.Tensor,
        global_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.audio
        x = a.embed(mel)  # (B, 4n, D)
        B, N, D = x.shape
        H = a.blocks[0].attn.heads
        hd = D // H
        cos, sin = rope_cos[:, None], rope_sin[:, None]  # (B, 1, N, hd/2)
        q_valid = new_valid.repeat_interleave(FREQ_PATCHES, dim=1)  # (B, N)
        q_col = torch.arange(N, device=x.device) // FREQ_PATCHES  # new column of each query
        masks = {}
        for kind, valid in (("local", local_valid), ("global", global_valid)):
            past = valid.repeat_interleave(FREQ_PATCHES, dim=1)  # (B, 4W) or (B, 4T)
            keys_valid = torch.cat([past, q_valid], 1)
            mask = keys_valid[:, None, :] & q_valid[:, :, None]  # (B, N, M + N)
            if kind == "local":  # new keys: within the window of the query's column
                near = (q_col[:, None] - q_col[None, :]).abs() <= self.half_window  # (N, N)
                # cached local columns are the newest W before the hop: query column j reaches those within the window
                W = valid.shape[1]
                past_col = torch.arange(4 * W, device=x.device) // FREQ_PATCHES - W  # -W .. -1
                reach = (q_col[:, None] - past_col[None, :]) <= self.half_window  # (N, 4W)
                mask = mask & torch.cat([reach, near], 1)[None]
            # a padding query attends to itself only, which keeps its (discarded) output finite
            pad_self = torch.arange(N, device=x.device)[:, None] + past.shape[1] == torch.arange(
                past.shape[1] + N, device=x.device)[None]
            masks[kind] = (mask | (pad_self[None] & ~q_valid[:, :, None]))[:, None]
            masks[kind + "_valid"] = keys_valid
        past_l = past_local.view(B, past_local.shape[1], -1, 2, H, hd)
        new_l, new_g = [], []
        for i, block in enumerate(a.blocks):
            h = block.norm1(x)
            q, k, v = block.attn.qkv(h).view(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
            q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
            if block.local:  # a few cached tokens: concatenating them is cheap
                slot = self.local_blocks.index(i)
                new_l.append(torch.stack([k, v], 2))  # (B, H, 2, N, hd)
                pk, pv = past_l[:, :, slot, 0].transpose(1, 2), past_l[:, :, slot, 1].transpose(1, 2)  # (B, H, W4, hd)
                y = F.scaled_dot_product_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2),
                                                   attn_mask=masks["local"])
            else:
                slot = self.global_blocks.index(i)
                new_g.append(torch.stack([k, v], 1))  # (B, 2, H, N, hd)
                y = attend_past(q, past_global[:, slot, 0], past_global[:, slot, 1], k, v, masks["global"])
            x = x + block.attn.proj(y.transpose(1, 2).reshape(B, N, D))
            x = x + block.mlp(block.norm2(x))
        tokens = a.norm(x)
        map_k, map_v = a.map_head.kv(tokens).view(B, N, 2, H, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd) each
        pooled = self.pool(past_global[:, -1, 0], past_global[:, -1, 1], map_k, map_v, masks["global_valid"])
        columns = tokens.view(B, N // FREQ_PATCHES, FREQ_PATCHES, D).mean(2)
        # local: (B, H, 2, N, hd) per block -> (B, N, blocks, 2, H, hd) -> (B, N, entry)
        new_local = torch.stack(new_l, 1).permute(0, 4, 1, 3, 2, 5).reshape(B, N, -1)
        new_global = torch.stack(new_g + [torch.stack([map_k, map_v], 1)], 1)  # (B, G, 2, H, N, hd)
        return a.dense_proj(columns), a.global_proj(pooled), new_local, new_global

    def pool(self, past_k: torch.Tensor, past_v: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
        """The MAP head over [cached | new] keys and values ((B, H, M | N, hd)); valid (B, M + N) -> (B, D)."""
        head = self.audio.map_head
        B, H, _, hd = k.shape
        q = head.q(head.query).view(1, H, 1, hd).expand(B, -1, -1, -1)
        y = attend_past(q, past_k, past_v, k, v, valid[:, None, None, :])  # (B, H, 1, hd)
        y = head.proj(y.transpose(1, 2).reshape(B, H * hd))
        return y + head.mlp(head.norm(y))
