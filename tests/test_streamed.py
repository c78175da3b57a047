"""A clip replayed hop by hop through the incremental encoder, as the engine encodes a stream, and
`main.py eval --variants` scoring it beside the whole-clip reference.

Specifications: with a context longer than the clip and one hop covering it, the replay is the
whole-clip encode; with the engine's 0.5 s hop every column comes out once, in order, from the
hop that first encoded it, exactly as the engine's stream context hands the hops out; a column
never depends on audio after its hop; clips replayed side by side give what each gives alone;
`main.py eval --variants` adds one system per variant to the clip-set table and one row set to the
dev table, and leaves the default output as it was. The model is slap-tiny with seeded random
weights (what is tested is the replay, not what the model learnt); the audio is real files made
with espeak-ng and sox."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import encoder.export as export_mod
from encoder.clipset import ClipSetItem
from encoder.frontend import COLUMN_SAMPLES, PATCH_FRAMES, log_mel, pad_to_columns, scored_columns
from encoder.runtime.onnx_backend import OnnxBackend
from encoder.runtime.stream_cache import encode_new_columns
from encoder.runtime.torch_backend import TorchBackend
from encoder.streamed import (
    column_hops,
    grid_ends,
    hop_ends,
    hop_grid,
    new_stream_cache,
    parse_variants,
    stream_clip,
    stream_clips,
    whole_clip,
    window_clips,
)
from streamer.context import StreamContext

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
needs_tools = pytest.mark.skipif(shutil.which("sox") is None or shutil.which("espeak-ng") is None,
                                 reason="needs sox and espeak-ng")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A cache dir holding slap-tiny's seeded weights and their export, as `main.py eval --model
    slap-tiny --cache-dir` finds them."""
    d = tmp_path_factory.mktemp("cache")
    model = export_mod.materialise_config("slap-tiny", d / "models" / "slap-tiny-seed0.safetensors")
    export_mod.export_cached(model, d)
    return d


@pytest.fixture(scope="module")
def backend(cache_dir) -> OnnxBackend:
    return OnnxBackend(next(cache_dir.glob("onnx-*")), threads=2)


def make_audio(folder: Path, name: str, *sox_effect: str) -> Path:
    """A 16 kHz mono FLAC: `sox -n` with a synth effect, or espeak-ng speech when sox_effect is
    ("speech", TEXT), resampled by sox."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.flac"
    if sox_effect[0] == "speech":
        wav = folder / f"{name}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), sox_effect[1]], check=True, capture_output=True)
        subprocess.run(["sox", str(wav), "-r", str(SR), "-c", "1", str(out)], check=True, capture_output=True)
        wav.unlink()
    else:
        subprocess.run(["sox", "-n", "-r", str(SR), "-c", "1", str(out), *sox_effect], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> dict[str, np.ndarray]:
    if shutil.which("sox") is None or shutil.which("espeak-ng") is None:
        pytest.skip("needs sox and espeak-ng")
    d = tmp_path_factory.mktemp("sounds")
    spec = {
        "speech": ("speech", "a dog barks twice, then the kettle boils in the kitchen"),
        "chirp": ("synth", "3.3", "sine", "300-3000", "vol", "0.5"),
        "knock": ("synth", "0.1", "pinknoise", "vol", "0.5"),  # shorter than one 160 ms column
        "rain": ("synth", "11.7", "brownnoise", "vol", "0.3"),  # longer than the 10 s context
    }
    return {k: sf.read(str(make_audio(d, k, *v)), dtype="float32")[0] for k, v in spec.items()}


def engine_replay(backend, audio: np.ndarray, chunk: int = 1600) -> tuple[list[np.ndarray], np.ndarray]:
    """The clip through a real StreamContext, fed in 0.1 s chunks, its windows encoded the way the
    engine's incremental mode does (Engine._encode_incremental per due hop, _score_tail at the end)."""
    ctx = StreamContext(max_context_s=10.0, hop_s=0.5)
    cache = new_stream_cache(backend, ctx.window_frames // PATCH_FRAMES)
    hops, glob = [], None

    def encode(w, commit: bool) -> None:
        nonlocal glob
        n = w.first_column + w.n_columns - cache.end_column
        if n > 0:
            mel = w.mel[None, :, (w.n_columns - n) * PATCH_FRAMES :].copy()
            cols, g = encode_new_columns(backend, mel, np.array([n]), [cache], commit=commit)
            hops.append(cols[0, :n])
            glob = g[0]

    for seq, lo in enumerate(range(0, len(audio), chunk)):
        ctx.push(audio[lo : lo + chunk], seq=seq, epoch=0)
        w = ctx.next_window()
        if w is not None:
            encode(w, commit=True)
    encode(ctx.tail_window(), commit=False)
    return hops, glob


def engine_window_replay(backend, audio: np.ndarray, chunk: int = 1600) -> tuple[np.ndarray, np.ndarray]:
    """The clip through a real StreamContext, every due window encoded whole as the engine's window
    mode does (Engine._encode_windows, _score_tail at the end), each column kept from the first
    window that holds it (the detector at lookback 0)."""
    ctx = StreamContext(max_context_s=10.0, hop_s=0.5)
    kept, glob, done = [], None, 0

    def encode(w) -> None:
        nonlocal glob, done
        if not w.n_columns:
            return
        cols, _, g = backend.encode(w.mel[None].copy(), np.array([max(w.mel.shape[1], PATCH_FRAMES)], np.int64))
        end = w.first_column + w.n_columns
        kept.append(cols[0, done - w.first_column : w.n_columns])
        glob, done = g[0], end

    for seq, lo in enumerate(range(0, len(audio), chunk)):
        ctx.push(audio[lo : lo + chunk], seq=seq, epoch=0)
        w = ctx.next_window()
        if w is not None:
            encode(w)
    w = ctx.tail_window()
    if w.first_column + w.n_columns > done:
        encode(w)
    return np.concatenate(kept), glob


def test_the_window_variant_is_the_engines_window_mode_column_by_column(backend, sounds):
    """The speed changes' reference: what the engine scored before its incremental encoder."""
    clips = [sounds[k] for k in ("speech", "chirp", "knock", "rain")]
    for x, (cols, glob) in zip(clips, window_clips(backend, clips, batch=3)):
        ref_cols, ref_glob = engine_window_replay(backend, x)
        assert cols.shape[0] == scored_columns(len(x)) == ref_cols.shape[0]
        np.testing.assert_allclose(cols, ref_cols, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(glob, ref_glob, atol=1e-4, rtol=1e-3)
    x = sounds["chirp"]  # shorter than the context: the last window is the whole clip
    np.testing.assert_allclose(window_clips(backend, [x])[0][1], whole_clip(backend, x)[1], atol=1e-5, rtol=1e-4)


def test_the_end_of_stream_summary_is_the_window_paths_last_global(backend, sounds):
    """What the engine publishes when a stream ends (Engine._summarise): the clip-level view of
    every variant but stream-live, whose global stays the last incremental hop's."""
    clips = [sounds[k] for k in ("speech", "chirp", "knock", "rain")]
    live = stream_clips(backend, clips, batch=3)
    summary = stream_clips(backend, clips, batch=3, summary=True)
    for (cols, glob), (live_cols, _), (_, window_glob) in zip(summary, live, window_clips(backend, clips, batch=3)):
        np.testing.assert_array_equal(cols, live_cols)  # the columns are the hops' either way
        np.testing.assert_allclose(glob, window_glob, atol=1e-4, rtol=1e-3)
    assert not np.allclose(live[0][1], summary[0][1], atol=1e-4)  # speech: its hops' columns never saw the end
    assert [v.summary for v in parse_variants("stream,stream-int8,stream-live")] == [True, True, False]


def test_one_hop_over_a_context_longer_than_the_clip_is_the_whole_clip_encode(backend, sounds):
    for name in ("chirp", "speech", "knock"):
        x = sounds[name]
        assert hop_ends(len(x), hop_s=5.0, context_s=10.0) == [scored_columns(len(x))]  # one call
        cols, glob = stream_clip(backend, x, hop_s=5.0, context_s=10.0)
        ref_cols, ref_glob = whole_clip(backend, x)
        assert cols.shape == ref_cols.shape == (scored_columns(len(x)), backend.manifest["embed_dim"])
        np.testing.assert_allclose(cols, ref_cols, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(glob, ref_glob, atol=1e-5, rtol=1e-4)


def test_the_whole_window_pass_made_block_causal_by_hop_is_the_hop_by_hop_encoder(cache_dir, sounds):
    """What the streaming fine-tune trains (encoder/stream_tune.py) is what the engine runs."""
    import torch

    torch_backend = TorchBackend(next((cache_dir / "models").glob("*.safetensors")))
    for name in ("chirp", "speech", "knock"):
        x = sounds[name]
        cols, glob = stream_clip(torch_backend, x)
        mel = log_mel(pad_to_columns(x))[None]
        hops = column_hops(hop_ends(len(x)))
        assert len(hops) == cols.shape[0]
        with torch.no_grad():
            out = torch_backend.model.audio(torch.from_numpy(mel), torch.tensor([mel.shape[-1]]),
                                            column_hop=torch.from_numpy(hops)[None])
        n = len(hops)
        np.testing.assert_allclose(out.columns[0, :n].numpy(), cols, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(out.global_emb[0].numpy(), glob, atol=2e-5, rtol=1e-4)
        if name == "speech":  # and not the bidirectional pass, whose early columns see later audio
            ref_cols, _ = whole_clip(torch_backend, x)
            assert np.abs(ref_cols[:3] - cols[:3]).max() > 1e-3


def test_a_stretch_of_a_live_stream_has_the_hop_grid_of_its_phase():
    assert grid_ends(19) == hop_ends(19 * COLUMN_SAMPLES)  # phase 0: the grid of a stream's start
    assert grid_ends(19, phase_frames=10) == [2, 5, 8, 11, 15, 18, 19]  # hops at frames 40, 90, ...
    assert list(column_hops([2, 5, 6])) == [0, 0, 1, 1, 1, 2]
    for phase in range(50):
        ends = grid_ends(40, phase)
        assert ends[-1] == 40 and all(0 < b - a <= 4 for a, b in zip([0] + ends, ends))
    with pytest.raises(ValueError, match="must increase"):
        column_hops([3, 3])


def test_training_views_get_the_hop_grid_of_a_stream_or_none():
    grid = hop_grid([19, 7], np.random.default_rng(0))
    assert grid.shape == (2, 19)
    for row, n in zip(grid, (19, 7)):
        hops = row[:n]
        assert hops[0] == 0 and np.all(np.diff(hops) >= 0) and np.all(np.diff(hops) <= 1)
        assert np.bincount(hops).max() <= 4  # a 0.5 s hop brings 3 or 4 columns of 160 ms
        assert np.all(row[n:] > hops[-1])  # padding: after every real column
    mixed = hop_grid([40] * 400, np.random.default_rng(1), p_causal=0.5)
    causal = mixed.max(1) > 0
    assert 150 < causal.sum() < 250  # about half the views
    assert not mixed[~causal].any()  # the rest: one hop, every token sees the whole view
    assert not hop_grid([40] * 8, np.random.default_rng(2), p_causal=0.0).any()


def test_the_hops_are_the_engines_whole_columns_then_the_padded_tail():
    five_s = 5 * SR
    assert hop_ends(five_s) == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31]  # floor(50 k / 16): 3 or 4 new columns
    whole = 31 * COLUMN_SAMPLES  # 4.96 s: 9 hops, then the tail's 3 whole columns
    assert hop_ends(whole) == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31]
    # half a column more: the 5 s hop falls due (its frame 500 is complete), then the padded tail
    assert hop_ends(whole + COLUMN_SAMPLES // 2) == [3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 32]
    assert hop_ends(whole + COLUMN_SAMPLES // 2 - 1) == hop_ends(whole)  # less: left out
    assert hop_ends(1600) == [1]  # 0.1 s: padded to one column
    assert hop_ends(3 * COLUMN_SAMPLES) == [3]  # before the first hop: the tail only
    with pytest.raises(ValueError, match="hop_s: expected 0.16 s"):
        hop_ends(five_s, hop_s=0.1)
    with pytest.raises(ValueError, match="context_s: expected"):
        hop_ends(five_s, context_s=31.0)


def test_a_half_second_hop_gives_each_column_once_in_order_as_the_engine_encodes_it(backend, sounds):
    for name in ("speech", "chirp", "knock", "rain"):
        x = sounds[name]
        cols, glob = stream_clip(backend, x)
        hops, engine_glob = engine_replay(backend, x)
        assert cols.shape[0] == scored_columns(len(x)) == sum(len(h) for h in hops), name
        assert {len(h) for h in hops[:-1]} <= {3, 4}, name  # every hop but the tail: 50 frames' new columns
        np.testing.assert_allclose(cols, np.concatenate(hops), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(glob, engine_glob, atol=1e-5, rtol=1e-4)


def test_a_column_never_depends_on_the_audio_after_its_hop(backend, sounds):
    x = sounds["rain"]  # 11.7 s: the cache slides past its 62 columns
    cols, _ = stream_clip(backend, x)
    cut = int(8.1 * SR)  # 16 hops, the last ending on column 800 // 16 = 50, then a tail padded to 51
    early, _ = stream_clip(backend, x[:cut])
    assert len(early) == 51
    np.testing.assert_allclose(cols[:50], early[:50], atol=1e-5, rtol=1e-4)
    assert not np.allclose(cols[50], early[50], atol=1e-3)  # column 50: the tail of the cut clip, not a hop's


def test_clips_streamed_side_by_side_give_what_each_gives_alone(backend, sounds):
    clips = list(sounds.values())
    together = stream_clips(backend, clips, batch=3)
    for x, (cols, glob) in zip(clips, together):
        alone_cols, alone_glob = stream_clip(backend, x)
        np.testing.assert_allclose(cols, alone_cols, atol=1e-4, rtol=1e-3)
        np.testing.assert_allclose(glob, alone_glob, atol=1e-4, rtol=1e-3)


def test_an_unknown_variant_is_refused_in_one_line():
    assert [v.system for v in parse_variants("stream, stream-int8")] == ["ours-stream", "ours-stream-int8"]
    assert parse_variants("window")[0].encoder == "window"
    assert parse_variants("") == []
    with pytest.raises(ValueError, match="unknown variant 'fp16'"):
        parse_variants("stream,fp16")
    r = subprocess.run([sys.executable, "main.py", "eval", "--variants", "stream,fp16", "--no-teachers"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "stream-int8" in r.stderr


# --- main.py eval ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clipset_dir(tmp_path_factory) -> Path:
    """A tiny clip set in the layout `main.py data clipset` writes: four classes, real files."""
    if shutil.which("sox") is None or shutil.which("espeak-ng") is None:
        pytest.skip("needs sox and espeak-ng")
    root = tmp_path_factory.mktemp("clipset")
    spec = {
        "speech": [("speech", "hello, is anybody there"), ("speech", "the train leaves at nine")],
        "beeping": [("synth", "1.3", "sine", "1000"), ("synth", "0.1", "square", "2000")],
        "hiss": [("synth", "4.2", "whitenoise", "vol", "0.3"), ("synth", "10.0", "whitenoise", "vol", "0.1")],
        "rumble": [("synth", "2.5", "brownnoise", "vol", "0.5"), ("synth", "6.0", "sine", "60", "vol", "0.8")],
    }
    items = []
    for label, files in spec.items():
        for k, effect in enumerate(files):
            name = f"{label}_{k}"
            path = make_audio(root / "audio" / "made", name, *effect)
            seconds = round(sf.info(str(path)).frames / SR, 3)
            items.append(ClipSetItem(f"made/{name}", "made", name, label, str(path.relative_to(root)), seconds,
                                     "made here", name))
    (root / "manifest.jsonl").write_text("".join(json.dumps(asdict(it)) + "\n" for it in items))
    return root


def eval_cmd(cache_dir: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", "eval", "--model", "slap-tiny", "--cache-dir", str(cache_dir),
                           "--no-teachers", "--json", str(tmp / "res.json"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@needs_tools
def test_eval_variants_add_a_system_beside_the_whole_clip_reference(cache_dir, clipset_dir, tmp_path):
    r = eval_cmd(cache_dir, tmp_path, "--clipset", str(clipset_dir), "--corpus", "none", "--variants", "stream")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| clip set zero-shot (8 clips, 4 classes) | ours | ours-stream |" in r.stdout
    res = json.loads((tmp_path / "res.json").read_text())
    assert "dev" not in res  # --corpus none: no dev part
    cs = res["clipset"]
    assert set(cs["metrics"]) == {"ours", "ours-stream"} and {"ours", "ours-stream"} <= set(cs["seconds"])
    for system in ("ours", "ours-stream"):
        assert all(0.0 <= v <= 1.0 for v in cs["metrics"][system].values())

    r = eval_cmd(cache_dir, tmp_path, "--clipset", str(clipset_dir), "--corpus", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| clip set zero-shot (8 clips, 4 classes) | ours |\n" in r.stdout  # the default: as before
    assert set(json.loads((tmp_path / "res.json").read_text())["clipset"]["metrics"]) == {"ours"}


needs_synth = pytest.mark.skipif(shutil.which("fluidsynth") is None or shutil.which("espeak-ng") is None,
                                 reason="needs fluidsynth and espeak-ng (the tiny corpus build)")


@needs_synth
def test_eval_variants_add_a_row_set_to_the_dev_frame_metrics(cache_dir, tmp_path):
    from encoder.data import build

    corpus = tmp_path / "corpus"
    assert build.main(["--tiny", "--out", str(corpus), "--cache", str(tmp_path / "sources"), "--seed", "3"]) == 0
    r = eval_cmd(cache_dir, tmp_path, "--corpus", str(corpus), "--clipset", "none", "--max-clips", "4",
                 "--variants", "window,stream,stream-int8")
    assert r.returncode == 0, r.stderr[-2000:]
    dev = json.loads((tmp_path / "res.json").read_text())["dev"]
    assert set(dev["variants"]) == {"ours-window", "ours-stream", "ours-stream-int8"}
    for name, m in dev["variants"].items():
        assert f"| event_F1 ({name}) |" in r.stdout
        for k in ("top1", "top5", "mAP", "segment_F1", "event_F1"):
            assert 0.0 <= m[k] <= 1.0, (name, k)
