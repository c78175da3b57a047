"""Debian sample packs: Qt resource files, DEP-5 credits and soundtracks, read from a real .deb.

The .deb is built here with dpkg-deb from a folder holding a Qt resource file (.rcc), a music
folder and a machine-readable copyright file, the layout GCompris's and the games' data packages
have.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
import soundfile as sf

from encoder.data import credits, packs
from encoder.data.packs import PackSpec, build_pack, expand_container, label_from_path, rcc_files

ESC50_ID = 100038  # a Freesound id ESC-50 holds (1-100038-A-14)


def _wav(freq: float, seconds: float = 0.5) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


def _rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-2 Qt resource file with the files (name -> (content, zlib-compressed)) in one
    folder "gcompris", as `rcc -binary` lays it out: header, data, names, tree."""
    names = b""
    name_off = {}
    for n in ["gcompris", *files]:
        name_off[n] = len(names)
        enc = n.encode("utf-16-be")
        names += struct.pack(">HI", len(n), 0) + enc
    data = b""
    data_off = {}
    for n, (blob, packed) in files.items():
        body = struct.pack(">I", len(blob)) + zlib.compress(blob) if packed else blob
        data_off[n] = len(data)
        data += struct.pack(">I", len(body)) + body
    tree = struct.pack(">IHII", 0, 2, 1, 1) + bytes(8)  # root: one child (node 1)
    tree += struct.pack(">IHII", name_off["gcompris"], 2, len(files), 2) + bytes(8)
    for n, (_, packed) in files.items():
        tree += struct.pack(">IHHHI", name_off[n], 1 if packed else 0, 0, 0, data_off[n]) + bytes(8)
    header = 20
    return (b"qres" + struct.pack(">IIII", 2, header + len(data) + len(names), header, header + len(data))
            + data + names + tree)


COPYRIGHT = f"""\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: testpack

Files: *
Copyright: 2020 Somebody
License: GPL-3+

Files: src/sounds/*.wav
Copyright: 2016 Someone on Freesound
License: CC0-1.0
Comment: https://www.freesound.org/people/someone/sounds/555/

Files: src/sounds/dog.wav
License: CC-BY-3.0
Comment: https://freesound.org/people/x/sounds/{ESC50_ID}/

Files: src/sounds/drum_kit.wav
License: CC-sampling-plus-1.0
Comment: http://www.freesound.org/samplesViewSingle.php?id=29534
 The webpage now indicates CC-BY-NC-3.0.

License: GPL-3+
 This program is free software; non-commercial use is not the point of this text.
"""


def test_a_qt_resource_file_yields_its_audio_plain_and_compressed():
    a, b = _wav(440), _wav(660)
    blob = _rcc({"violin.ogg": (a, False), "cow.wav": (b, True), "icon.svg": (b"<svg/>", False)})
    assert dict(rcc_files(blob)) == {"/gcompris/violin.ogg": a, "/gcompris/cow.wav": b, "/gcompris/icon.svg": b"<svg/>"}
    # inside a deb's member path, only the audio, named below the resource file
    got = dict(expand_container("usr/share/x/rcc/instruments.rcc", blob))
    assert set(got) == {"usr/share/x/rcc/instruments.rcc/gcompris/violin.ogg",
                        "usr/share/x/rcc/instruments.rcc/gcompris/cow.wav"}
    with pytest.raises(ValueError, match="qres"):
        list(rcc_files(b"RIFF...."))


def test_dep5_credits_last_matching_stanza_wins_and_nc_comments_count():
    stanzas = credits.read_dep5(COPYRIGHT)
    assert len(stanzas) == 4  # the stand-alone licence text is not a Files stanza
    c = credits.dep5_credit(stanzas, "src/sounds/rain.wav")
    assert c.licence == "CC0-1.0" and c.freesound_ids == (555,) and not c.non_commercial
    assert credits.dep5_credit(stanzas, "src/sounds/dog.wav").freesound_ids == (ESC50_ID,)
    assert credits.dep5_credit(stanzas, "src/sounds/drum_kit.wav").non_commercial  # the comment says NC
    assert credits.dep5_credit(stanzas, "src/music/a/b.ogg").licence == "GPL-3+"  # "*" crosses folders
    assert credits.dep5_credit(stanzas[1:], "README") is None


@pytest.mark.parametrize("path,label", [
    ("usr/share/gcompris-qt/rcc/instruments.rcc/gcompris/src/activities/instruments/resource/piano.ogg", "piano"),
    ("usr/share/gcompris-qt/rcc/instruments.rcc/gcompris/src/activities/instruments/resource/horn.ogg",
     "french_horn"),
    ("usr/share/gcompris-qt/rcc/melody.rcc/gcompris/src/activities/melody/resource/xylofon_son2.wav", "xylophone"),
    ("usr/share/lmms/samples/instruments/e_piano_accord01.ogg", "electric_piano"),
    ("usr/share/games/0ad/mods/public/public.zip/audio/voice/latin/civ/civ_female_my_lord_1.ogg", "female_speech"),
    ("usr/share/games/0ad/mods/public/public.zip/audio/voice/persian/civ/civ_male_attack_1.ogg", "male_speech"),
    ("usr/share/gcompris-qt/rcc/explore_farm_animals.rcc/gcompris/src/activities/explore_farm_animals/"
     "resource/animals/chickens.ogg", "chicken"),
])
def test_gcompris_and_instrument_names(path, label):
    assert label_from_path(path) == label


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_a_pack_with_credits_drops_nc_and_esc50_files_and_labels_its_soundtrack(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: testpack\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n")
    rcc = _rcc({"src/sounds/rain.wav": (_wav(300, 1.0), False), "src/sounds/dog.wav": (_wav(500), False),
                "src/sounds/drum_kit.wav": (_wav(200), True), "src/sounds/owl.wav": (_wav(700), True)})
    (root / "usr/share/testpack/rcc").mkdir(parents=True)
    (root / "usr/share/testpack/rcc/sounds.rcc").write_bytes(rcc)
    (root / "usr/share/testpack/music").mkdir(parents=True)
    (root / "usr/share/testpack/music/fire_dance.wav").write_bytes(_wav(262, 30.0))
    (root / "usr/share/doc/testpack").mkdir(parents=True)
    (root / "usr/share/doc/testpack/copyright").write_text(COPYRIGHT)
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(debs / "testpack_1.0_all.deb")],
                   check=True, capture_output=True)
    spec = PackSpec("testpack", "GPL-3+ (package)", r"testpack/rcc/.*\.rcc$", music=r"testpack/music/",
                    credits="usr/share/doc/testpack/copyright", credits_root=r"^.*\.rcc/gcompris/")
    lib, stats = build_pack(spec, debs, yamnet=None, esc50_ids=frozenset({ESC50_ID}))
    assert stats["non_commercial"] == 1 and stats["esc50_duplicates"] == 1  # drum_kit, dog
    by_label = {it.label: it for it in lib.items}
    assert set(by_label) == {"rain", "owl", "music"}  # "fire_dance" is a track name, not a fire
    assert by_label["rain"].licence == "CC0-1.0" and by_label["owl"].licence == "CC0-1.0"
    assert by_label["music"].licence == "GPL-3+" and by_label["music"].meta["labelled_by"] == "package music"
    # a piece of a soundtrack gives its first MAX_MUSIC_S in MAX_ITEM_S pieces
    music = [it.n_samples for it in lib.items if it.label == "music"]
    assert sum(music) == packs.MAX_MUSIC_S * 16000 and max(music) == packs.MAX_ITEM_S * 16000


def test_every_pack_label_is_a_class():
    from encoder.data.labels import CLASSES

    assert {label for _, label in packs.LABEL_RULES} - {"-"} <= set(CLASSES)
    assert any(p.music for p in packs.PACKS) and any(p.credits for p in packs.PACKS)
