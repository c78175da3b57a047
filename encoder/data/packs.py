"""Recorded sounds from Debian data packages (game and sample packs), labelled by file name.

`apt-get download` fetches each .deb into cache/sources/debs (never installed); the audio members
are read straight out of `dpkg --fsys-tarfile`. Labels come from `LABEL_RULES` (regex over the
member path -> class); files no rule matches go to the YAMNet pseudo-labeller and are kept only
when it is confident. `source_id` is the file path without its variant number ("dog2" -> "dog"),
because numbered files in these packs are usually takes of one recording. A package's soundtrack
(`PackSpec.music`) is the class "music" whatever its pieces are called, and a package with a
machine-readable copyright file (`PackSpec.credits`) gives each file its own licence and drops the
NC ones and ESC-50's Freesound recordings.
"""

from __future__ import annotations

import io
import random
import re
import shutil
import struct
import subprocess
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from . import credits as credit_files
from .sources import SAMPLE_RATE, Library, SourceItem, stable_hash, to_mono_16k, trim
from .yamnet import YamNet, pseudo_label

AUDIO_EXT = (".wav", ".ogg", ".flac", ".oga")
MAX_ITEM_S = 12.0  # long ambiences are cut into pieces of at most this length
MAX_FILE_S = 60.0  # and at most this much is kept from one file
MAX_MUSIC_S = 24.0  # of a soundtrack's piece: 120 pieces would otherwise fill 15 % of a 12 h corpus


@dataclass(frozen=True)
class PackSpec:
    deb: str
    licence: str
    include: str  # regex over tar member paths: what to read
    exclude: str = r"/music/|/doc/"
    inner: str = ""  # regex over members of an archive (.zip/.pk3) in the deb; "" = all audio
    music: str = ""  # regex over member paths: the package's soundtrack, every file labelled "music"
    # the package's machine-readable (DEP-5) copyright file: per-file licences and Freesound ids,
    # so NC files and ESC-50's recordings are dropped; credits_root turns a member path into the
    # source-tree path that the file's "Files:" patterns name
    credits: str = ""
    credits_root: str = ""

    def is_music(self, path: str) -> bool:
        return bool(self.music) and re.search(self.music, path) is not None


PACKS = (
    PackSpec("sound-theme-freedesktop", "GPL-2+ / CC-BY-SA", r"sounds/freedesktop/stereo/.*\.oga$"),
    PackSpec("oxygen-sounds", "CC-BY-SA-3.0 / LGPL", r"sounds/Oxygen-.*\.ogg$"),
    PackSpec("bucklespring-data", "GPL-2+", r"buckle/wav/.*\.wav$"),
    PackSpec("minetest-data", "CC-BY-SA-3.0 / CC0", r"sounds/.*\.ogg$"),
    PackSpec("openttd-opensfx", "CC-BY-SA-3.0 / CC0 / GPL-2", r"opensfx\.cat$"),
    PackSpec("lmms-common", "GPL-2+", r"lmms/samples/(drums|effects|instruments|latin|misc|beats|stringsnpads)/.*",
             r"/music/|/doc/|waveforms|shapes"),
    PackSpec("hydrogen-data", "GPL-2+", r"drumkits/.*\.(wav|flac)$"),
    PackSpec("sonic-pi-samples", "CC0 / CC-BY (freesound)", r"sonic-pi/samples/.*\.flac$"),
    PackSpec("ufoai-sound", "GPL-2+ / CC-BY-SA", r"0snd\.pk3$"),
    PackSpec("scorched3d-data", "GPL-2+", r"globalmods/.*/wav/.*\.wav$", music=r"scorched3d/.*/music/.*\.ogg$"),
    PackSpec("lincity-ng-data", "GPL-2+", r"lincity-ng/sounds/.*\.(wav|ogg)$", music=r"lincity-ng/music/"),
    PackSpec("wesnoth-1.16-data", "GPL-2+", r"wesnoth/1\.16/data/.*sounds/.*\.(ogg|wav)$"),  # 1.16/sounds: UI
    PackSpec("widelands-data", "GPL-2+", r"widelands/data/(sound|world)/.*\.(ogg|wav)$",
             r"/music/|/doc/|/sound/(gui|message|lobby|military|other)|/sound/[^/]*\.ogg$",
             music=r"widelands/data/music/.*\.ogg$"),
    PackSpec("megaglest-data", "CC-BY-SA-3.0",
             r"megaglest/(tilesets/[^/]+/sounds|techs/megapack/commondata/sounds|data/core/water_sounds|"
             r"techs/megapack/factions/[^/]+/units/(chicken|sheep|bull|elephant|wild_sow|beehive|"
             r"horseman|swordman|worker|technician|archer)/sounds)/.*\.(wav|ogg)$",
             music=r"megaglest/.*/music/.*\.ogg$"),
    # 0 A.D.: its real recordings, its soundtrack (62 recorded pieces) and its citizens' voices
    # (short spoken orders by men and women, in Greek, Latin, Meroitic and Persian)
    PackSpec("0ad-data", "CC-BY-SA-3.0", r"0ad/mods/public/public\.zip$",
             inner=r"^audio/(actor/fauna/(animal|death)|ambient/(weather|water|dayscape|building)|"
                   r"resource|actor/singlesteps|attack|music|voice/[a-z]+/civ)/",
             music=r"public\.zip/audio/music/"),
    # real speech: one woman's (Allison Smith's) telephone prompts, recorded at 8 kHz; not its
    # silences and tones
    PackSpec("asterisk-core-sounds-en-wav", "CC-BY-SA-3.0 (Allison Smith)", r"asterisk/sounds/[^/]+/.*\.wav$",
             r"/doc/|/silence/|tone|beep"),
    # Scratch 1.4's sound library: real recordings named by what they are (Electronic and Vocals skipped:
    # synthetic effects and sung phrases)
    PackSpec("scratch", "CC-BY-SA-3.0 (MIT Scratch media)",
             r"scratch/Media/Sounds/(Animal|Effects|Human|Instruments|Percussion)/.*\.(wav|mp3)$"),
    # GCompris's activities (Qt resource files): farm animals, 25 instruments, world music, the sound
    # memory game's recordings and a few activities' real sounds; not its UI jingles (core.rcc)
    PackSpec("gcompris-qt-data", "GPL-3+ / CC0 / CC-BY-3.0 / free-art (per file, DEP-5)",
             r"gcompris-qt/rcc/(explore_farm_animals|explore_world_music|instruments|memory-sound|canal_lock|"
             r"watercycle|railroad|traffic|guessnumber|money|target|melody|clickgame|"
             r"scalesboard|reversecount)\.rcc$",
             music=r"explore_world_music\.rcc", credits="usr/share/doc/gcompris-qt-data/copyright",
             credits_root=r"^.*\.rcc/gcompris/"),
)
LIBRARY_VERSION = 2  # part of each pack library's cache key: bump when labelling code changes

# (regex over the normalised path "words separated by spaces", label); the first match wins.
# Order matters: specific phrases before the generic words they contain.
# The label "-" drops a file: names that mislead the rules below (UI clicks, spoken channel names).
LABEL_RULES: tuple[tuple[str, str], ...] = (
    (r"\basterisk sounds\b", "female_speech"),  # the pack is one woman's speech; "alarm" etc. are words in it
    (r"^audio voice \w+ civ civ female", "female_speech"),  # 0 A.D.'s citizens: "civ_female_build_02"
    (r"^audio voice \w+ civ civ male", "male_speech"),
    (r"\bcough", "coughing"),
    (r"\bsneeze", "sneezing"),
    (r"baby ?cry|infant cry", "baby_crying"),
    (r"sea ?lion", "sea_lion"),
    (r"tambura", "-"),  # a drone instrument, not a tambourine
    (r"water ?drop", "water_drops"),
    (r"car ?passing", "car_passing"),
    (r"motorcycle", "motorcycle"),
    (r"\btyping\b", "typing"),
    (r"accordion", "accordion"),
    (r"harmonica", "harmonica"),
    (r"banjo", "banjo"),
    (r"\bharp\b", "harp"),
    (r"saxophone|\bsax\b", "saxophone"),
    (r"clarinet", "clarinet"),
    (r"trombone", "trombone"),
    (r"\btuba\b", "tuba"),
    (r"timpani", "timpani"),
    (r"xylofon|xylophone", "xylophone"),
    (r"instruments resource horn\b", "french_horn"),  # GCompris's instrument, not a car's or a ship's
    (r"fire ?station|audio channel|audio test|fanfare|\bbutton|checkbox|slider|\bclick|select unit|"
     r"swordman (ack|select)", "-"),
    (r"drum (splash|cymbal)|drumkits .*splash", "cymbal"),
    (r"^\d+ (big )?crash\b", "car_crash"),
    (r"ship horn|ferry horn|foghorn", "ship_horn"),
    (r"chainsaw", "chainsaw"),
    (r"jackhammer|pneumatic drill|air hammer", "jackhammer"),
    (r"crashing tree|falling tree|lumber", "wood_chopping"),
    (r"\bmine (stone|metal)\b|mining", "digging"),
    (r"\bcon (wood|stone)\b", "hammering"),
    (r"shield metal", "sword"),
    (r"wind ?gust|windleaves|windstorm|snowstorm", "wind"),
    (r"\bgoats?\b", "goat"),
    (r"\blion\b", "lion"),
    (r"stonecutt|stonemason|stonegrind", "hammering"),
    (r"\b(break ?glass|glass break|shatter)", "glass_breaking"),
    (r"\bcrossbow|\bbow\b|arrow|\bdart\b", "arrow"),
    (r"\bdoors? .*(close|slam)|perc door|door\d* close", "door_slam"),
    (r"\bdoors? .*open|door\d* open|creak", "door_creak"),
    (r"footstep|singlestep|\bfootsteps\b|/footsteps/|\bsteps\b", "footsteps"),
    (r"\bdog\d*\b|\bbark", "dog"),
    (r"\bmisc crow\b|\bcrow\b", "crow"),
    (r"rooster", "rooster"),
    (r"chicken|\bhen\b", "chicken"),
    (r"\bcows?\b|\bmoo\b|\bbull\b|mudchute cow|\box\b|cattle", "cow"),
    (r"\bpig\b|wild sow|\bboar\b", "pig"),
    (r"sheep", "sheep"),
    (r"horse (elf )?canter|gallop", "horse_gallop"),
    (r"\bhorse\b|\bdonkey\b", "horse"),
    (r"\bwolf\b|coyote", "wolf"),
    (r"\bowl\b", "owl"),
    (r"gull", "seagull"),
    (r"\bduck\b", "duck"),
    (r"\bfrogs?\b", "frog"),
    (r"cricket", "crickets"),
    (r"\bbees?\b|beehive|\bbee\d", "bees"),
    (r"elephant|\bele\d|eleattack", "elephant"),
    (r"\bstag\b|moose|\bdeer\b", "deer"),
    (r"\bcat\b|meow", "cat"),
    (r"bird|chirp|hawk|\beagle\b", "bird"),
    (r"laugh", "laughter"),
    (r"scream|shriek", "scream"),
    (r"\b(human|dwarf|elf|orc|troll|ogre|goblin|civ|civfem|civmale|male|female|naga|mermen|"
     r"mermaid|yeti|zombie|archer|swordman|worker|technician|horseman)\w* ?(hit|die|death|hurt)|"
     r"(male|female)(death|hurt)|\bgroan|\bugg\b|player damage", "groan"),
    (r"breath", "breathing"),
    (r"\bburp", "burp"),
    (r"applause", "applause"),
    (r"crowd|croud|cheer", "crowd"),
    (r"\bclap", "hand_clap"),
    (r"heart", "heartbeat"),
    (r"\bpunch|\bfist\b", "punch"),
    (r"carhorn|car horn", "car_horn"),
    (r"siren|policecar|firetruck", "siren"),
    (r"railtrain|\btrain\b", "train"),
    (r"helicopter|apache", "helicopter"),
    (r"\bjet\b|\bf1[68]\b|\bt38\b|cessna|flyby|aircraft|plane", "jet_plane"),
    (r"trafic|traffic|citysounds|dirttrack", "traffic"),
    (r"diesel|\bengine\b|tankmove", "car_engine"),
    (r"thunder", "thunder"),
    (r"\brain\b", "rain"),
    (r"\bwind\b|arcticwind", "wind"),
    (r"oceanwaves|\bwaves?\b|seashore", "sea_waves"),
    (r"splash|water impact", "splash"),
    (r"bubble|gloop", "bubbles"),
    (r"stream|river|\bwater\d*\b|waterfontain|parklandlake|water sounds", "stream"),
    (r"campfire|\bfire\d*\b|firesoft|smallfire|fire (large|small|fire)|flame|\blava\b|napalm", "fire"),
    (r"phone|\bring\b", "telephone"),
    (r"alarm", "alarm"),
    (r"church bell", "church_bell"),
    (r"wind chimes?|windchime", "wind_chimes"),
    (r"camera", "camera_shutter"),
    (r"metronome", "metronome"),
    (r"anvil|blacksmith", "anvil"),
    (r"hammer|smith", "hammering"),
    (r"\bsaw\b|sawing|sawmill|benchsaw", "sawing"),
    (r"woodcutting|chop|\bcutting\b|tree falling", "wood_chopping"),
    (r"\bdig\b|\bdigging\b|shovel|pickaxe|gravel dig|worker mine", "digging"),
    (r"cash|register|\btill\b|\bcoins?\b|\bgold\b", "cash_register"),
    (r"balloon scratch", "-"),
    (r"vinyl|scratch(?! media)", "vinyl_scratch"),  # not the Scratch package's own folder
    (r"machinegun|machine gun|chaingun|\bsmg\b|\bhmg\b|minigun", "machine_gun"),
    (r"gunshot|shotgun|pistol|rifle|sniper|musket|\bgun\b|thunderstick|cannon", "gunshot"),
    (r"explo|\bbomb|\bboom\b|cineboom|tnt explode|nuclear", "explosion"),
    (r"sword|\bblade\b|clash|dagger|\bknife\b", "sword"),
    (r"laser", "laser"),
    (r"swoosh|woosh|swish|\bmiss\b|whoosh", "whoosh"),
    (r"factory|industry|machine|\bmill\b|coalmine|oremine|windmill", "machinery"),
    (r"bell", "bell"),
    (r"\bbeep|elec blip|elec ping|oxygen|freedesktop|dialog|message|notification", "beep"),
    # instruments (lmms, sonic-pi, hydrogen)
    (r"church organ", "church_organ"),
    (r"\be piano|epiano", "electric_piano"),  # not "resource piano"
    (r"\bpiano", "piano"),
    (r"harpsichord", "harpsichord"),
    (r"\borgan", "organ"),
    (r"violin", "violin"),
    (r"cello", "cello"),
    (r"flute", "flute"),
    (r"trumpet|brass", "trumpet"),
    (r"distorted|guit e|electric guitar", "electric_guitar"),
    (r"guitar|guit", "acoustic_guitar"),
    (r"strings", "strings"),
    (r"choir|chorus", "choir"),
    (r"tabla|bongo|conga", "hand_drum"),
    (r"loop amen|breakbeat|\bbreak\d*\b|beat|jungle|house loop|loop (compus|tabla|safari)", "drum_kit"),
    (r"hihat|hi hat|\bhat\b|\bhh\b", "hi_hat"),
    (r"snare|\bsn (dolf|dub|generic|zome)|sidestick|\brim", "snare_drum"),
    (r"\bkick|bassdrum|bass drum|\bbd (808|ada|boom|fat|gas|haus|klub|mehackit|pure|sone|tek|zome|zum)",
     "bass_drum"),
    (r"\btom", "tom_drum"),
    (r"cymbal|\bcrash\d*\b|\bride\d*\b", "cymbal"),
    (r"cowbell", "cowbell"),
    (r"tambourine|\btamb", "tambourine"),
    (r"shaker|maraca|cabasa", "shaker"),
    (r"triangle", "triangle"),
)
_COMPILED = tuple((re.compile(p), label) for p, label in LABEL_RULES)


def normalise_path(path: str) -> str:
    """'sounds/Dog_bark-2.WAV' -> 'sounds dog bark 2 wav'; split camelCase so 'CityBlues' matches."""
    p = re.sub(r"([a-z])([A-Z])", r"\1 \2", path)
    return re.sub(r"[^a-z0-9]+", " ", p.lower()).strip()


def label_from_path(path: str) -> str | None:
    """Class label from a pack member path using LABEL_RULES, or None. Inside an archive only the
    member's own path counts (the archive's name, e.g. "opensfx.cat", says nothing)."""
    words = normalise_path(re.split(r"\.(?:cat|pk3|zip|rcc)/", path)[-1])
    for rx, label in _COMPILED:
        if rx.search(words):
            return label
    return None


def recording_id(deb: str, path: str) -> str:
    """source_id of a pack file: its path without take numbers or velocity-layer suffixes."""
    stem = re.sub(r"^usr/share/(games/)?", "", re.sub(r"\.[a-z0-9]+$", "", path.lower()))
    prev = None
    while prev != stem:
        prev = stem
        stem = re.sub(r"([-_ .]?(\d+[a-z]?|hard|hardest|soft|softest|med|long|short))$", "", stem)
    return f"{deb}:{stem}"


def fetch_deb(name: str, debs_dir: Path) -> Path:
    """The cached .deb of a package, downloaded with `apt-get download` when absent."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(debs_dir.glob(f"{name}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get not found: cannot download {name} (Debian-based system needed)")
    r = subprocess.run(["apt-get", "download", name], cwd=debs_dir, capture_output=True, text=True)
    found = sorted(debs_dir.glob(f"{name}_*.deb"))
    if r.returncode != 0 or not found:
        raise RuntimeError(f"apt-get download {name} failed: {r.stderr.strip().splitlines()[-1:]}")
    return found[-1]


def iter_deb_members(deb: Path, spec: PackSpec, spool_dir: Path) -> Iterator[tuple[str, bytes | Path]]:
    """(path, content) of the deb's data members matching the spec (its include and exclude, or its
    music), read without unpacking the deb.
    Archives (.zip) come as a temporary file in spool_dir (0ad's is 3 GB), others as bytes."""
    if shutil.which("dpkg") is None:
        raise RuntimeError("dpkg not found: cannot read .deb sample packs")
    inc, exc = re.compile(spec.include), re.compile(spec.exclude)
    proc = subprocess.Popen(["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for m in tar:
            if m.isfile() and ((inc.search(m.name) and not exc.search(m.name)) or spec.is_music(m.name)):
                f = tar.extractfile(m)
                if f is None:
                    continue
                if m.name.endswith(".zip"):
                    spool_dir.mkdir(parents=True, exist_ok=True)
                    tmp = spool_dir / f"{deb.stem}.zip.tmp"
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(f, out, 2**22)
                    try:
                        yield m.name.lstrip("./"), tmp
                    finally:
                        tmp.unlink(missing_ok=True)
                else:
                    yield m.name.lstrip("./"), f.read()
    proc.wait()


def read_deb_member(deb: Path, member: str) -> bytes | None:
    """One file of a .deb's data (e.g. its copyright file), or None when absent."""
    # stops reading at the member: dpkg's complaint about the closed pipe is expected
    proc = subprocess.Popen(["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    found = None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for m in tar:
            if m.isfile() and m.name.lstrip("./") == member:
                f = tar.extractfile(m)
                found = f.read() if f is not None else None
                break
    proc.stdout.close()
    proc.wait()
    return found


def expand_container(path: str, data: bytes | Path, inner: str = "") -> Iterator[tuple[str, bytes]]:
    """Audio files inside archives: .zip, Quake-style .pk3 (zip), OpenTTD's opensfx.cat and Qt's .rcc.
    inner: regex an archive member must match."""
    if path.endswith((".pk3", ".zip")):
        rx = re.compile(inner) if inner else None
        with zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data)) as z:
            for name in z.namelist():
                # an archive's music is skipped unless the inner pattern names it
                if name.lower().endswith(AUDIO_EXT) and (rx.search(name) if rx else "music/" not in name):
                    yield f"{path}/{name}", z.read(name)
    elif path.endswith(".cat"):
        # Table of (uint32 offset | 0x80000000 flag, uint32 size); entry = name length byte,
        # name ("Cow - Moan 2"), then a RIFF WAV.
        first = int.from_bytes(data[0:4], "little") & 0x7FFFFFFF
        for i in range(first // 8):
            off = int.from_bytes(data[8 * i : 8 * i + 4], "little") & 0x7FFFFFFF
            size = int.from_bytes(data[8 * i + 4 : 8 * i + 8], "little")
            n = data[off]
            desc = data[off + 1 : off + 1 + n].split(b"\0")[0].decode("latin-1")
            title = re.search(r'"([^"]+)"', desc)  # 'Title'. Original ... License: ...
            name = re.sub(r"[^\w ()-]+", " ", title.group(1) if title else desc[:40]).strip()
            yield f"{path}/{i:02d} {name}.wav", data[off + 1 + n : off + size]
    elif path.endswith(".rcc"):
        for name, blob in rcc_files(data):
            if name.lower().endswith(AUDIO_EXT + (".mp3",)):
                yield f"{path}/{name.lstrip('/')}", blob
    else:
        yield path, data


def rcc_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, content) of the files in a Qt resource file (.rcc, as `rcc -binary` writes it).

    Header: b"qres", version, then the offsets of the tree, the data and the names (uint32 big
    endian). Tree nodes are 14 bytes (version 1) or 22 (version >= 2: + last-modified): name offset,
    flags (2 = directory: child count, first child; else country, language, data offset). A name is
    its length, a hash, then UTF-16BE; a file's data is its size then the bytes, zlib-compressed
    after a 4-byte length when flags & 1. zstd-compressed files (flags & 4) are skipped: no reader
    for them here."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource file (no 'qres' magic)")
    version, tree, blobs, names = struct.unpack(">IIII", data[4:20])
    node_size = 22 if version >= 2 else 14

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", data[names + off : names + off + 2])
        return data[names + off + 6 : names + off + 6 + 2 * n].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        i, prefix = stack.pop()
        o = tree + i * node_size
        name_off, flags = struct.unpack(">IH", data[o : o + 6])
        path = f"{prefix}/{name_at(name_off)}" if i else ""
        if flags & 2:
            count, first = struct.unpack(">II", data[o + 6 : o + 14])
            stack.extend((j, path) for j in range(first + count - 1, first - 1, -1))
            continue
        if flags & 4:
            continue
        (off,) = struct.unpack(">I", data[o + 10 : o + 14])
        (size,) = struct.unpack(">I", data[blobs + off : blobs + off + 4])
        blob = data[blobs + off + 4 : blobs + off + 4 + size]
        yield path, zlib.decompress(blob[4:]) if flags & 1 else blob


def decode(data: bytes) -> tuple[np.ndarray, int] | None:
    """Decoded audio (float32, sample rate) via libsndfile, falling back to ffmpeg."""
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return x, sr
    except Exception:
        pass
    if shutil.which("ffmpeg") is None:
        return None
    r = subprocess.run(["ffmpeg", "-v", "quiet", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "-ar",
                        str(SAMPLE_RATE), "pipe:1"], input=data, capture_output=True)
    if r.returncode != 0 or not r.stdout:
        return None
    return np.frombuffer(r.stdout, dtype=np.float32)[:, None].copy(), SAMPLE_RATE


def segments(audio: np.ndarray, max_file_s: float = MAX_FILE_S) -> list[np.ndarray]:
    """Cut long recordings into <= MAX_ITEM_S pieces, keeping at most max_file_s per file."""
    x = audio[: int(max_file_s * SAMPLE_RATE)]
    step = int(MAX_ITEM_S * SAMPLE_RATE)
    if len(x) <= step:
        return [x]
    return [x[i : i + step] for i in range(0, len(x), step) if len(x) - i > SAMPLE_RATE]


def typing_sequences(keys: list[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """bucklespring holds single key presses/releases; typing is a run of them at human pace."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(6, 30)):
            k = keys[rng.randrange(len(keys))]
            parts.append(k * rng.uniform(0.5, 1.0))
            parts.append(np.zeros(int(rng.uniform(0.05, 0.3) * SAMPLE_RATE), np.float32))
        out.append(np.concatenate(parts))
    return out


def build_pack(spec: PackSpec, debs_dir: Path, yamnet: YamNet | None, threshold: float = 0.4,
               progress: Callable[[int], None] | None = None,
               esc50_ids: frozenset[int] = frozenset()) -> tuple[Library, dict]:
    """Library of one package's labelled sounds, plus stats (files, by_rule, by_yamnet, dropped,
    non_commercial, esc50_duplicates). esc50_ids: Freesound ids whose files are dropped (ESC-50's,
    where the package's credits name a file's Freesound source)."""
    deb = fetch_deb(spec.deb, debs_dir)
    lib = Library()
    stats = {"files": 0, "by_rule": 0, "by_yamnet": 0, "dropped": 0, "non_commercial": 0, "esc50_duplicates": 0}
    stanzas = None
    if spec.credits:
        text = read_deb_member(deb, spec.credits)
        if text is None:
            raise RuntimeError(f"{deb.name}: no {spec.credits}: the pack's per-file licences are unknown")
        stanzas = credit_files.read_dep5(text.decode("utf-8", "replace"))
    keys: list[np.ndarray] = []
    for member, data in iter_deb_members(deb, spec, debs_dir.parent / "spool"):
        for path, blob in expand_container(member, data, spec.inner):
            stats["files"] += 1
            credit = (credit_files.dep5_credit(stanzas, re.sub(spec.credits_root, "", path))
                      if stanzas is not None else None)
            if credit is not None and credit.non_commercial:
                stats["non_commercial"] += 1
                continue
            if credit is not None and esc50_ids.intersection(credit.freesound_ids):
                stats["esc50_duplicates"] += 1
                continue
            licence = credit.licence if credit is not None and credit.licence else spec.licence
            dec = decode(blob)
            if dec is None:
                stats["dropped"] += 1
                continue
            audio = to_mono_16k(*dec)
            if spec.deb == "bucklespring-data":
                keys.append(trim(audio))
                continue
            # a soundtrack is music whatever its track is called ("fire_dance", "river_ride")
            label, how = ("music", "package music") if spec.is_music(path) else (label_from_path(path), "rule")
            if label is None and yamnet is not None and len(audio) >= 0.2 * SAMPLE_RATE:
                label, score, name = pseudo_label(yamnet.scores(audio[: int(30 * SAMPLE_RATE)]),
                                                  threshold)
                how = f"yamnet:{name}:{score:.2f}"
            if label is None or label == "-":
                stats["dropped"] += 1
                continue
            stats["by_yamnet" if how.startswith("yamnet") else "by_rule"] += 1
            sid = recording_id(spec.deb, path)
            for j, seg in enumerate(segments(audio, MAX_MUSIC_S if label == "music" else MAX_FILE_S)):
                lib.add(SourceItem(f"{spec.deb}:{path}:{j}", sid, label, f"pack:{spec.deb}",
                                   licence, meta={"path": path, "labelled_by": how}), seg)
        if progress is not None:
            progress(1)
    if keys:
        for j, seq in enumerate(typing_sequences(keys, 40, seed=int(stable_hash(spec.deb), 16) % 2**31)):
            lib.add(SourceItem(f"{spec.deb}:typing:{j}", f"{spec.deb}:keyboard", "typing",
                               f"pack:{spec.deb}", spec.licence, meta={"labelled_by": "package"}), seq)
    return lib, stats
