"""The caption decoder: causal, blind to memory padding, tied output, and able to learn captions."""


import pytest
import torch
import torch.nn.functional as F

from encoder.decoder import CaptionDecoder, DecoderConfig

MEMORY_DIM = 48
SMALL = DecoderConfig(width=64, depth=2, heads=4, mlp_hidden=128, vocab_size=100, max_len=16)


@pytest.fixture
def decoder() -> CaptionDecoder:
    torch.manual_seed(0)
    return CaptionDecoder(SMALL, memory_dim=MEMORY_DIM).eval()


def _inputs(B=3, L=10, N=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SMALL.vocab_size, (B, L), generator=g)
    memory = torch.randn(B, N, MEMORY_DIM, generator=g)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, 4:] = False  # row 1 has 4 real memory tokens, row 2 has 2
    valid[2, 2:] = False
    return ids, memory, valid


def test_output_shape_and_dtype(decoder):
    ids, memory, valid = _inputs()
    logits = decoder(ids, memory, valid)
    assert logits.shape == (3, 10, SMALL.vocab_size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_default_config_matches_the_tokenizer_and_recipe():
    cfg = DecoderConfig()
    assert (cfg.width, cfg.depth, cfg.heads, cfg.vocab_size, cfg.max_len) == (256, 2, 4, 30522, 32)
    dec = CaptionDecoder(cfg, memory_dim=256)
    ids = torch.tensor([[101, 1037, 3899]])  # [CLS] a dog: the text tower's tokenizer
    logits = dec(ids, torch.randn(1, 5, 256), torch.ones(1, 5, dtype=torch.bool))
    assert logits.shape == (1, 3, 30522)


@pytest.mark.parametrize("t", [0, 4, 8])
def test_causal_later_tokens_do_not_change_earlier_logits(decoder, t):
    ids, memory, valid = _inputs()
    changed = ids.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % SMALL.vocab_size
    a, b = decoder(ids, memory, valid), decoder(changed, memory, valid)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_padded_memory_is_ignored(decoder):
    ids, memory, valid = _inputs()
    noisy = torch.where(valid[..., None], memory, 100.0 * torch.randn_like(memory))
    torch.testing.assert_close(decoder(ids, memory, valid), decoder(ids, noisy, valid))
    # and trimming the padding away gives the same logits as padding it
    torch.testing.assert_close(decoder(ids[2:], memory[2:, :2], valid[2:, :2]), decoder(ids, memory, valid)[2:])


def test_valid_memory_is_used(decoder):
    ids, memory, valid = _inputs()
    changed = memory.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(decoder(ids, memory, valid), decoder(ids, changed, valid))


def test_output_projection_is_tied_to_the_token_embedding(decoder):
    names = [n for n, _ in decoder.named_parameters()]
    assert "tok_emb.weight" in names and not any("head" in n or "lm" in n for n in names)
    assert all(m.bias is None for m in decoder.modules() if isinstance(m, torch.nn.Linear))


def test_too_long_input_is_refused(decoder):
    ids, memory, valid = _inputs(L=SMALL.max_len + 1)
    with pytest.raises(AssertionError, match="max_len"):
        decoder(ids, memory, valid)


def test_overfits_two_captions_and_greedy_decoding_reads_them_back():
    torch.manual_seed(0)
    bos, eos, pad = 1, 2, 0
    captions = [[bos, 10, 11, 12, 13, eos], [bos, 20, 11, 22, eos, pad]]  # share a token, differ in length
    ids = torch.tensor(captions)  # (2, 6)
    memory = torch.randn(2, 5, MEMORY_DIM)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    dec = CaptionDecoder(SMALL, memory_dim=MEMORY_DIM)
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)

    def loss_fn():
        logits = dec(ids[:, :-1], memory, valid)  # (2, 5, V): position t predicts token t + 1
        return F.cross_entropy(logits.reshape(-1, SMALL.vocab_size), ids[:, 1:].reshape(-1), ignore_index=pad)

    first = loss_fn().item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    last = loss_fn().item()
    assert last < first / 5, (first, last)

    out = dec.eval().generate(memory, valid, bos_id=bos, eos_id=eos, max_len=10, pad_id=pad)
    assert out[0].tolist() == captions[0]
    assert out[1].tolist() == captions[1]  # stops at its EOS and pads while row 0 finishes
