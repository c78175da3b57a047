"""Our EfficientAT mn04_as: parity with the reference fixture, expected tags, strict loading,
one-line errors for missing files, and batching that never changes a clip's result."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from safetensors.torch import load_file, save_file

from encoder.frontend import AudioError
from encoder.teachers import mn04 as m

TEACHERS = m.teachers_dir()
pytestmark = pytest.mark.skipif(
    not (TEACHERS / m.WEIGHTS_FILE).is_file(),
    reason=f"teacher files not found in {TEACHERS} (../shared/teachers beside the repo, or $SLAP_TEACHERS_DIR)",
)
SAMPLES = ("speech", "music", "typing")


def _sine_1k_1s() -> np.ndarray:
    t = np.arange(m.SAMPLE_RATE) / m.SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def _sample(name: str) -> np.ndarray:
    audio, sr = sf.read(TEACHERS / "samples" / f"{name}.wav", dtype="float32")
    assert sr == m.SAMPLE_RATE and audio.ndim == 1
    return audio


def _input(name: str) -> np.ndarray:
    return _sine_1k_1s() if name == "sine1k_1s" else _sample(name)


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(TEACHERS / "mn04_reference.npz"))


@pytest.fixture(scope="module")
def teacher() -> m.MN04Teacher:
    return m.MN04Teacher(threads=1)


def _top(probs: np.ndarray, k: int) -> dict[str, float]:
    names = m.class_names()
    return {names[i]: float(probs[i]) for i in np.argsort(-probs)[:k]}


def test_constants_show_their_derivation():
    assert m.FRAMES_PER_SECOND == 100
    assert m.NET_STRIDE == 32
    assert m.FRAME_HOP_S == pytest.approx(0.32)
    assert m.n_frames(10 * m.SAMPLE_RATE) == 1000 and m.n_steps(10 * m.SAMPLE_RATE) == 32


def test_teachers_dir_is_beside_the_repo_unless_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.delenv(m.TEACHERS_DIR_ENV, raising=False)
    assert m.teachers_dir() == Path(m.__file__).resolve().parents[2].parent / "shared" / "teachers"
    monkeypatch.setenv(m.TEACHERS_DIR_ENV, str(tmp_path))
    assert m.teachers_dir() == tmp_path


@pytest.mark.parametrize("name", ["sine1k_1s", *SAMPLES])
def test_front_end_and_network_match_the_reference(name, reference, teacher):
    mel = m.mn04_mel(torch.from_numpy(_input(name))[None])  # (1, 128, T)
    np.testing.assert_allclose(mel[0].numpy(), reference[f"{name}_mel"], atol=1e-4, rtol=0)
    with torch.inference_mode():
        logits, embedding, frame_logits = teacher.model(mel[:, None])
    np.testing.assert_allclose(logits[0].numpy(), reference[f"{name}_logits"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(embedding[0].numpy(), reference[f"{name}_embedding"], atol=1e-4, rtol=0)
    assert frame_logits.shape == (1, m.n_steps(len(_input(name))), m.N_CLASSES)


def test_recordings_at_32k_get_their_tags(teacher):
    out = teacher.predict([_sample(n) for n in SAMPLES], sample_rate=m.SAMPLE_RATE)
    speech, music, typing = (_top(p, 2) for p in out.clip_probs)
    # the values the reference logits give (sigmoid of mn04_reference.npz's <name>_logits)
    assert list(speech)[0] == "Speech" and speech["Speech"] == pytest.approx(0.818, abs=0.005)
    assert list(music)[0] == "Music" and music["Music"] == pytest.approx(0.598, abs=0.005)
    assert set(typing) == {"Computer keyboard", "Typing"}
    assert typing["Computer keyboard"] == pytest.approx(0.891, abs=0.005)
    assert typing["Typing"] == pytest.approx(0.871, abs=0.005)


def test_recordings_through_16k_get_the_readme_figures(teacher):
    """The engine's audio is 16 kHz: band-limited to 8 kHz, resampled to 32 kHz inside predict."""
    clips = [soxr.resample(_sample(n), m.SAMPLE_RATE, 16000) for n in SAMPLES]
    out = teacher.predict(clips, sample_rate=16000)
    assert [len(f) for f in out.frame_probs] == [32, 32, 32]
    speech, music, typing = (_top(p, 2) for p in out.clip_probs)
    assert list(speech)[0] == "Speech" and speech["Speech"] == pytest.approx(0.88, abs=0.01)
    assert list(music)[0] == "Music" and music["Music"] == pytest.approx(0.89, abs=0.01)
    assert typing["Typing"] == pytest.approx(0.85, abs=0.01)
    assert typing["Computer keyboard"] == pytest.approx(0.83, abs=0.01)


def test_batched_predict_equals_one_clip_at_a_time(teacher):
    speech, music = _sample("speech"), _sample("music")
    sr = m.SAMPLE_RATE
    clips = [speech, music, speech[: 3 * sr], music[: 3 * sr], music[: int(0.4 * sr)], speech[: int(2.5 * sr)]]
    together = teacher.predict(clips, sample_rate=sr)
    assert together.clip_probs.shape == (6, m.N_CLASSES) and together.embedding.shape == (6, m.EMBED_DIM)
    assert [len(f) for f in together.frame_probs] == [32, 32, 10, 10, 2, 8]
    assert together.frame_hop_s == pytest.approx(0.32)
    for i, clip in enumerate(clips):
        alone = teacher.predict([clip], sample_rate=sr)
        np.testing.assert_allclose(together.clip_probs[i], alone.clip_probs[0], atol=1e-5)
        np.testing.assert_allclose(together.embedding[i], alone.embedding[0], atol=1e-5)
        np.testing.assert_allclose(together.frame_probs[i], alone.frame_probs[0], atol=1e-5)


def test_short_clips_are_zero_padded_to_one_second(teacher):
    short = _sample("typing")[: int(0.2 * m.SAMPLE_RATE)]
    padded = np.pad(short, (0, m.MIN_SAMPLES - len(short)))
    a, b = teacher.predict([short], m.SAMPLE_RATE), teacher.predict([padded], m.SAMPLE_RATE)
    np.testing.assert_allclose(a.clip_probs, b.clip_probs, atol=1e-6)
    assert len(a.frame_probs[0]) == 1 and len(b.frame_probs[0]) == m.n_steps(m.MIN_SAMPLES) == 4
    tiny = teacher.predict([np.zeros(10, np.float32)], 16000)  # shorter than one STFT frame
    assert tiny.clip_probs.shape == (1, m.N_CLASSES) and len(tiny.frame_probs[0]) == 1


@pytest.mark.parametrize(
    "clip, says",
    [
        (np.zeros(16000, np.int16), "clip 1: expected float32"),
        (np.zeros((2, 16000), np.float32), "clip 1: expected non-empty mono"),
        (np.zeros(0, np.float32), "clip 1: expected non-empty mono"),
        (np.full(16000, np.nan, np.float32), "clip 1: NaN"),
    ],
)
def test_bad_clips_get_a_one_line_error(teacher, clip, says):
    with pytest.raises(AudioError) as err:
        teacher.predict([np.zeros(16000, np.float32), clip])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_every_weight_is_used_and_every_parameter_loaded():
    state = load_file(str(TEACHERS / m.WEIGHTS_FILE))
    assert len(state) == 312
    assert set(state) == set(m.MN04().state_dict())
    model = m.load_mn04()
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.98e6, rel=0.02)


@pytest.mark.parametrize("edit", ["rename", "drop", "extra", "reshape"])
def test_weights_that_do_not_fit_fail_with_one_line_naming_the_keys(tmp_path, edit):
    state = load_file(str(TEACHERS / m.WEIGHTS_FILE))
    key = "features.13.block.2.conc_se_layers.0.fc1.weight"
    if edit == "rename":
        state["features.13.block.2.conc_se_layers.0.fc_1.weight"] = state.pop(key)
    elif edit == "drop":
        del state[key]
    elif edit == "extra":
        state["features.17.0.weight"] = state[key].clone()
    else:
        state[key] = state[key][:8].clone()
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError) as err:
        m.load_mn04(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert ("features.17.0.weight" if edit == "extra" else key) in message


def test_missing_teacher_files_fail_with_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(m.TEACHERS_DIR_ENV, str(tmp_path))
    assert m.teachers_dir() == tmp_path
    for load in (m.load_mn04, m.MN04Teacher):
        with pytest.raises(FileNotFoundError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message
        assert str(tmp_path / m.WEIGHTS_FILE) in message and "teacher weights" in message
        assert m.TEACHERS_DIR_ENV in message
    with pytest.raises(FileNotFoundError, match=m.LABELS_FILE):
        m.class_names()
    with pytest.raises(FileNotFoundError, match="given.safetensors"):
        m.load_mn04(tmp_path / "given.safetensors")


def test_class_list_is_audioset_order(teacher):
    names, mids = teacher.class_names(), m.class_mids()
    assert len(names) == len(mids) == m.N_CLASSES
    assert (names[0], mids[0]) == ("Speech", "/m/09x0r")
    assert names.index("Music") == 137 and "Typing" in names and "Computer keyboard" in names
