"""The audio encoder: packing, padding, local attention, RoPE and MAP pooling behave as specified."""

import numpy as np
import pytest
import torch

from encoder import frontend as fe
from encoder.model import AudioEncoder, EncoderConfig, MAPHead, Rotary, pack_plan, patchify
from encoder.streamed import hop_grid

SMALL = EncoderConfig(width=64, depth=3, heads=4, mlp_hidden=128, pattern="LLG", window_columns=4, embed_dim=32)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return AudioEncoder(SMALL).eval()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), 64, max(lengths), generator=g), torch.tensor(lengths)


def test_torch_patches_match_the_numpy_front_end():
    mel = np.random.default_rng(0).standard_normal((2, 64, 70)).astype(np.float32)
    np.testing.assert_array_equal(patchify(torch.from_numpy(mel)).numpy(), fe.patchify(mel))


def test_output_shapes(encoder):
    mel, lengths = _batch([1000, 480])
    out = encoder(mel, lengths)
    assert out.tokens.shape == (2, 248, 64)
    assert out.columns.shape == (2, 62, 32) and out.global_emb.shape == (2, 32)
    assert out.token_valid.sum(1).tolist() == [248, 120]
    assert out.column_valid.sum(1).tolist() == [62, 30]


@torch.no_grad()
def test_packed_execution_equals_padded(encoder):
    mel, lengths = _batch([700, 160, 333, 512, 48])
    padded = encoder(mel, lengths)
    for row_tokens in (64, 200, 1000):
        packed = encoder.forward_packed(mel, lengths, row_tokens=row_tokens)
        v, cv = padded.token_valid, padded.column_valid
        assert (packed.tokens[v] - padded.tokens[v]).abs().max() < 1e-4
        assert (packed.columns[cv] - padded.columns[cv]).abs().max() < 1e-4
        assert (packed.global_emb - padded.global_emb).abs().max() < 1e-4


@torch.no_grad()
def test_packed_execution_keeps_each_clips_block_causal_hops(encoder):
    mel, lengths = _batch([700, 160, 333, 512, 48])
    hops = torch.from_numpy(hop_grid((lengths // 16).tolist(), np.random.default_rng(0), p_causal=0.6))
    assert (hops.amax(1) > 0).any() and (hops.amax(1) == 0).any()  # causal and whole clips side by side
    padded = encoder(mel, lengths, column_hop=hops)
    assert (padded.global_emb - encoder(mel, lengths).global_emb).abs().max() > 1e-4  # the hops matter
    for row_tokens in (64, 200, 1000):  # clips packed together never see each other's hops
        packed = encoder.forward_packed(mel, lengths, row_tokens=row_tokens, column_hop=hops)
        cv = padded.column_valid
        assert (packed.columns[cv] - padded.columns[cv]).abs().max() < 1e-4
        assert (packed.global_emb - padded.global_emb).abs().max() < 1e-4


@torch.no_grad()
def test_padding_never_changes_valid_outputs(encoder):
    mel, lengths = _batch([320])
    alone = encoder(mel, lengths)
    longer = torch.cat([mel, torch.randn(1, 64, 500) * 100], dim=-1)  # loud garbage in the padding
    padded = encoder(longer, lengths)
    assert (padded.tokens[:, :80] - alone.tokens).abs().max() < 1e-5
    assert (padded.global_emb - alone.global_emb).abs().max() < 1e-5
    assert not padded.column_valid[0, 20:].any()


def test_local_attention_sees_only_its_window():
    torch.manual_seed(0)
    cfg = EncoderConfig(width=32, depth=1, heads=2, mlp_hidden=64, pattern="L", window_columns=4, embed_dim=16)
    enc = AudioEncoder(cfg)
    mel = torch.randn(1, 64, 320, requires_grad=True)  # 20 columns
    out = enc(mel, torch.tensor([320]))
    out.tokens[0, 10 * 4].sum().backward()  # a token in column 10
    grad_per_column = mel.grad[0].abs().sum(0).view(20, 16).sum(1)
    inside = [c for c in range(20) if abs(c - 10) <= cfg.window_columns // 2]
    assert all(grad_per_column[c] > 0 for c in inside)
    assert all(grad_per_column[c] == 0 for c in range(20) if c not in inside)


def test_global_attention_sees_the_whole_clip():
    torch.manual_seed(0)
    enc = AudioEncoder(EncoderConfig(width=32, depth=1, heads=2, mlp_hidden=64, pattern="G", embed_dim=16))
    mel = torch.randn(1, 64, 320, requires_grad=True)
    enc(mel, torch.tensor([320])).tokens[0, 0].sum().backward()
    assert (mel.grad[0].abs().sum(0).view(20, 16).sum(1) > 0).all()


def test_rope_scores_depend_only_on_relative_position():
    rot = Rotary(head_dim=16)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(tq, fq, tk, fk):
        cq, sq = rot.angles(torch.tensor([[tq]]), torch.tensor([[fq]]))
        ck, sk = rot.angles(torch.tensor([[tk]]), torch.tensor([[fk]]))
        return (Rotary.rotate(q, cq, sq) * Rotary.rotate(k, ck, sk)).sum().item()

    base = score(3, 1, 7, 2)
    assert score(103, 1, 107, 2) == pytest.approx(base, abs=1e-4)  # shift in time
    assert score(3, 2, 7, 3) == pytest.approx(base, abs=1e-4)  # shift in frequency
    assert score(3, 1, 8, 2) != pytest.approx(base, abs=1e-3)  # a different offset scores differently
    assert score(3, 1, 7, 3) != pytest.approx(base, abs=1e-3)


@torch.no_grad()
def test_map_pooling_is_invariant_to_token_order():
    torch.manual_seed(0)
    head = MAPHead(width=32, heads=4, mlp_hidden=64)
    x = torch.randn(2, 12, 32)
    seg = torch.zeros(2, 12, dtype=torch.long)
    perm = torch.randperm(12)
    assert torch.allclose(head(x, seg, 1), head(x[:, perm], seg, 1), atol=1e-6)


def test_pack_plan_fills_rows_first_fit_decreasing():
    plan = pack_plan([10, 3, 7, 2], row_len=12)
    assert plan.rows == 2
    # no row holds more than row_len tokens and every token has a distinct slot
    assert len(set(plan.token_index.tolist())) == 22
    assert (plan.token_index // 12).bincount().max() <= 12
    assert plan.clip_row[0] != plan.clip_row[2]  # 10 and 7 cannot share a row of 12


def test_mask_token_replaces_hidden_patches(encoder):
    mel, lengths = _batch([320])
    mask = torch.zeros(1, 80, dtype=torch.bool)
    mask[0, :40] = True
    with torch.no_grad():
        a = encoder(mel, lengths, token_mask=mask)
        b = encoder(mel + torch.randn_like(mel) * (torch.arange(320) < 160), lengths, token_mask=mask)
    assert torch.allclose(a.global_emb, b.global_emb, atol=1e-5)  # hidden columns 0-9 do not leak
