"""Real recordings from the public GitHub repositories of ../shared/data-sources.md, as training items.

    python main.py data build --repos REPOS [--esc50 ESC50_DIR] ...

REPOS holds checkouts of the repositories (`git clone`, or fetched snapshots), each found as
REPOS/<name>, REPOS/<owner>+<name> or REPOS/<owner>/<name> (encoder.clipset.find_repo); sources not
found are skipped and nothing is ever fetched. Every audio file becomes one recording with its
classes from encoder/data/repo_labels.py (unlabelled ones too: the teacher labels them), except:

- every recording the held-out clip set reserves (encoder.clipset.held_out_recordings): the clip
  set is computed from the same folder, so its recordings never reach the corpus;
- files whose credits say non-commercial (mod-sounds sources.md per file, CDDA credits per folder);
- files whose Freesound id is also an ESC-50 recording (Kitchen20's ids from kitchen20.csv, the
  credit links of mod-sounds and CDDA), when the ESC-50 ids are given;
- ESC-50 itself (the chunks in DroneAudioDataset/Binary_Drone_Audio/unknown), the drone clips
  that were mixed with noise there (its noise is partly ESC-50), generated noise and silence, and
  duplicate copies (mod-sounds' sounds_src, DroneAudioDataset's Multiclass_Drone_Audio).

Each dropped file is counted by reason in the source's stats, which go into the corpus's
build_info.json with the source's licence.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from encoder import clipset

from . import credits, repo_labels
from .labels import CLASSES
from .packs import AUDIO_EXT, MAX_FILE_S, MAX_ITEM_S, decode, segments
from .sources import SAMPLE_RATE, Library, SourceItem, stable_hash, to_mono_16k

REPO_LIBRARY_VERSION = 1  # part of each source library's cache key: bump when reading changes
AUDIO_SUFFIXES = (*AUDIO_EXT, ".mp3")
_TAKE = clipset.TAKE  # one take rule for the clip set and the corpus
_ESC50_NAME = re.compile(r"^[1-5]-\d+-[A-Z]-")  # ESC-50 file names ({fold}-{freesound id}-{take}-...)


@dataclass(frozen=True)
class RepoFile:
    """One recording of a source: a file, or the one-second chunks one recording was cut into."""

    source: str  # as encoder.clipset names sources ("mod-sounds"), else the repository name
    recording: str  # held-out and dev-split unit: all takes of one recording share it
    parts: tuple[str, ...]  # paths inside the checkout, joined in this order
    labels: tuple[str, ...]  # corpus classes, main one first; () = unlabelled
    licence: str
    freesound_ids: tuple[int, ...] = ()
    labelled_by: str = "table"  # "clip set table", "table", "none"

    @property
    def source_id(self) -> str:
        return f"{self.source}:{self.recording}"


@dataclass(frozen=True)
class Skip:
    path: str
    reason: str  # "non_commercial", "synthetic", "duplicate", "esc50_benchmark", "mixed_with_noise"


Reader = Callable[[Path, dict[Path, clipset.Recording]], Iterator["RepoFile | Skip"]]


@dataclass(frozen=True)
class RepoSource:
    owner: str
    name: str
    source: str
    licence: str
    reader: Reader


def _from_clipset(r: clipset.Recording, repo: Path, licence: str, freesound: tuple[int, ...] = ()) -> RepoFile:
    return RepoFile(r.source, r.recording, (str(r.path.relative_to(repo)),), (repo_labels.CLIPSET_LABELS[r.label],),
                    licence, freesound, "clip set table")


def _labelled_by(labels: tuple[str, ...]) -> str:
    return "table" if labels else "none"


# --- readers, one per repository layout -------------------------------------------------------

def _whole_clipset_source(licence: str) -> Reader:
    """Sources whose every file the clip-set table labels (Animal-Sound-Dataset, Audio-Classification)."""
    def read(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
        for _, r in sorted(known.items(), key=lambda kv: kv[0]):
            yield _from_clipset(r, repo, licence)
    return read


def _kitchen20(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
    ids = {}
    with open(repo / "kitchen20.csv", newline="") as f:
        for row in csv.DictReader(f):
            ids[(repo / row["path"]).resolve()] = row["usr_id"]
    for path, r in sorted(known.items(), key=lambda kv: kv[0]):
        fsid = ids.get(path, "")
        yield _from_clipset(r, repo, "Freesound CC (Kitchen20, Apache-2.0 repo)", (int(fsid),) if fsid.isdigit() else ())


def _mod_sounds(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
    tables = credits.read_mod_sounds(repo / "sources.md") if (repo / "sources.md").is_file() else {}
    for f in sorted((repo / "sounds_src").glob("*")):
        yield Skip(str(f.relative_to(repo)), "duplicate")  # flac masters of sounds/*.ogg
    for f in sorted((repo / "sounds").glob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        rel, name = str(f.relative_to(repo)), f.stem.removeprefix("sounds_")
        prefix = "sounds_node_" if name.startswith("node_") else "sounds_"
        table = tables.get(prefix)
        credit = table.lookup(f.stem.removeprefix(prefix)) if table else None
        if credit is not None and credit.non_commercial:
            yield Skip(rel, "non_commercial")
            continue
        licence = credit.licence if credit and credit.licence else "unknown (not in sources.md)"
        fsids = credit.freesound_ids if credit else ()
        r = known.get(f.resolve())
        if r is not None:
            yield _from_clipset(r, repo, licence, fsids)
            continue
        stem = _TAKE.match(name)[1]
        labels = repo_labels.lookup(repo_labels.MOD_SOUNDS, stem)
        yield RepoFile("mod-sounds", stem, (rel,), labels, licence, fsids, _labelled_by(labels))


def _moodist(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
    root = repo / "public" / "sounds"
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        rel, key = str(f.relative_to(repo)), str(f.relative_to(root).with_suffix(""))
        if key.startswith(repo_labels.MOODIST_SYNTHETIC):
            yield Skip(rel, "synthetic")
            continue
        r = known.get(f.resolve())
        if r is not None:
            yield _from_clipset(r, repo, "Pixabay / CC0 (MIT repo)")
            continue
        labels = repo_labels.lookup(repo_labels.MOODIST, key)
        yield RepoFile("moodist", key, (rel,), labels, "Pixabay / CC0 (MIT repo)", (), _labelled_by(labels))


def _cdda(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
    pack = repo / "sound" / "CC-Sounds"
    nc_anywhere = credits.non_commercial_names(pack)
    tables: dict[Path, credits.CreditTable] = {}
    for f in sorted(pack.rglob("*")):
        if f.suffix.lower() not in AUDIO_SUFFIXES or "music" in f.relative_to(pack).parts:
            continue
        rel = str(f.relative_to(repo))
        table = tables.setdefault(f.parent, credits.read_cdda_folder(f.parent))
        credit = table.lookup(f.stem)
        if f.stem in nc_anywhere or (credit is not None and credit.non_commercial):
            yield Skip(rel, "non_commercial")
            continue
        key = _TAKE.match(str(f.relative_to(pack).with_suffix("")))[1]
        labels = repo_labels.lookup(repo_labels.CDDA, key)
        licence = credit.licence if credit and credit.licence else "unknown (not in credits.md)"
        yield RepoFile("CDDA-Soundpacks", key, (rel,), labels, licence,
                       credit.freesound_ids if credit else (), _labelled_by(labels))


_CHUNK = re.compile(r"^(?P<rec>.+?)-[a-z]+_(?P<n>\d+)_?$")  # B_S2_D1_067-bebop_003_ -> B_S2_D1_067, 3
_SC_CHUNK = re.compile(r"^(?P<rec>[a-z_]+?)(?P<n>\d+)$")  # doing_the_dishes012 -> doing_the_dishes, 12


def _chunked(files: list[Path], rx: re.Pattern) -> dict[str, list[Path]]:
    """recording -> its chunk files in chunk order."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for f in files:
        m = rx.match(f.stem)
        rec, n = (m["rec"], int(m["n"])) if m else (f.stem, 0)
        groups.setdefault(rec, []).append((n, f))
    return {rec: [f for _, f in sorted(chunks)] for rec, chunks in sorted(groups.items())}


def _drone(repo: Path, known: dict[Path, clipset.Recording]) -> Iterator[RepoFile | Skip]:
    base = repo / "Binary_Drone_Audio"
    for f in sorted((repo / "Multiclass_Drone_Audio").rglob("*.wav")):
        yield Skip(str(f.relative_to(repo)), "duplicate")  # the same clips as Binary_Drone_Audio
    drone = []
    for f in sorted((base / "yes_drone").glob("*.wav")):
        if f.name.startswith("mixed"):
            yield Skip(str(f.relative_to(repo)), "mixed_with_noise")
        else:
            drone.append(f)
    for rec, chunks in _chunked(drone, _CHUNK).items():
        yield RepoFile("DroneAudioDataset", rec, tuple(str(c.relative_to(repo)) for c in chunks),
                       repo_labels.DRONE, "none stated (Al-Emadi et al. 2019)")
    noise = []
    for f in sorted((base / "unknown").glob("*.wav")):
        if _ESC50_NAME.match(f.name):
            yield Skip(str(f.relative_to(repo)), "esc50_benchmark")  # never trained on
        elif f.stem.startswith(repo_labels.SPEECH_COMMANDS_SYNTHETIC):
            yield Skip(str(f.relative_to(repo)), "synthetic")
        else:
            noise.append(f)
    for rec, chunks in _chunked(noise, _SC_CHUNK).items():
        labels = repo_labels.SPEECH_COMMANDS.get(rec, ())
        yield RepoFile("DroneAudioDataset", f"speech_commands/{rec}", tuple(str(c.relative_to(repo)) for c in chunks),
                       labels, "CC BY 4.0 (Speech Commands background noise)", (), _labelled_by(labels))


SOURCES = (
    RepoSource("AntumMT", "mod-sounds", "mod-sounds", "CC0 / CC BY / CC BY-SA, per file in sources.md", _mod_sounds),
    RepoSource("Fris0uman", "CDDA-Soundpacks", "CDDA-Soundpacks",
               "CC0 / CC BY, per folder in credits.md (repository CC BY-SA 4.0)", _cdda),
    RepoSource("YashNita", "Animal-Sound-Dataset", "Animal-Sound-Dataset", "none stated",
               _whole_clipset_source("none stated")),
    RepoSource("marc-moreaux", "kitchen20", "kitchen20", "Freesound CC audio (Apache-2.0 repository)", _kitchen20),
    RepoSource("remvze", "moodist", "moodist", "Pixabay / CC0 sounds (MIT repository)", _moodist),
    RepoSource("seth814", "Audio-Classification", "Audio-Classification",
               "Freesound CC (FSDKaggle2018; per-clip licences not in the repository)",
               _whole_clipset_source("Freesound CC (FSDKaggle2018)")),
    RepoSource("saraalemadi", "DroneAudioDataset", "DroneAudioDataset",
               "drone clips: none stated (Al-Emadi et al. 2019); background noise: Speech Commands, CC BY 4.0",
               _drone),
)


# --- scanning: what goes in, what is dropped and why -------------------------------------------

@dataclass
class SourceScan:
    spec: RepoSource
    repo: Path
    files: list[RepoFile] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> files

    @property
    def key(self) -> str:
        """Cache key of this source's library: what is read and how it is labelled."""
        sizes = [(p, (self.repo / p).stat().st_size) for f in self.files for p in f.parts]
        return stable_hash(REPO_LIBRARY_VERSION, MAX_ITEM_S, MAX_FILE_S, self.spec.source,
                           [asdict(f) for f in self.files], sizes)

    def stats(self) -> dict:
        return {"repository": f"{self.spec.owner}/{self.spec.name}", "licence": self.spec.licence,
                "licences": dict(Counter(f.licence for f in self.files).most_common()),
                "recordings": len({f.recording for f in self.files}), "files": sum(len(f.parts) for f in self.files),
                "unlabelled_recordings": len({f.recording for f in self.files if not f.labels}),
                "held_out": self.dropped["held_out"], "non_commercial": self.dropped["non_commercial"],
                "esc50_duplicates": self.dropped["esc50_duplicate"],
                "skipped": {k: v for k, v in sorted(self.dropped.items())
                            if k not in ("held_out", "non_commercial", "esc50_duplicate")}}


@dataclass
class Scan:
    root: Path
    sources: list[SourceScan]
    esc50_checked: bool

    @property
    def key(self) -> str:
        return stable_hash(*(s.key for s in self.sources), self.esc50_checked, repo_labels.all_tables())


def scan(root: str | Path, esc50_ids: set[int] | None) -> Scan:
    """Every source found under root, with the files it contributes and the ones it drops.
    esc50_ids None: Freesound duplicates of ESC-50 cannot be checked (the caller warns)."""
    root = Path(root)
    known: dict[str, dict[Path, clipset.Recording]] = {}
    recs = clipset.recordings(root)
    for r in recs:
        known.setdefault(r.source, {})[r.path.resolve()] = r
    held = clipset.held_out_recordings(recs)
    out = []
    for spec in SOURCES:
        repo = clipset.find_repo(root, spec.owner, spec.name)
        if repo is None:
            continue
        s = SourceScan(spec, repo)
        for f in spec.reader(repo, known.get(spec.source, {})):
            if isinstance(f, Skip):
                s.dropped[f.reason] += 1
            elif (f.source, f.recording) in held:
                s.dropped["held_out"] += len(f.parts)
            elif esc50_ids and set(f.freesound_ids) & esc50_ids:
                s.dropped["esc50_duplicate"] += len(f.parts)
            else:
                unknown = [lab for lab in f.labels if lab not in CLASSES]
                if unknown:
                    raise ValueError(f"{spec.name}: {f.parts[0]}: classes {unknown} are not in encoder/data/labels.py")
                s.files.append(f)
        out.append(s)
    if not out:
        raise FileNotFoundError(f"{root}: none of the GitHub sources found (expected e.g. {root}/"
                                f"{SOURCES[0].owner}+{SOURCES[0].name} or {root}/{SOURCES[0].name})")
    return Scan(root, out, esc50_ids is not None)


# --- decoding into a source library ------------------------------------------------------------

def read_parts(repo: Path, parts: tuple[str, ...]) -> np.ndarray | None:
    """(N,) float32 16 kHz mono: the parts decoded and joined; None when one cannot be decoded."""
    pieces = []
    for p in parts:
        dec = decode((repo / p).read_bytes())
        if dec is None:
            return None
        pieces.append(to_mono_16k(*dec))
    return np.concatenate(pieces) if pieces else None


def build_library(s: SourceScan, progress: Callable[[int], None] | None = None) -> tuple[Library, dict]:
    """Library of one source's recordings (long ones cut as packs.segments does), and its stats."""
    lib = Library()
    undecodable = 0
    for f in s.files:
        audio = read_parts(s.repo, f.parts)
        if audio is None or not np.isfinite(audio).all():
            undecodable += 1
            continue
        label, extra = (f.labels[0], list(f.labels[1:])) if f.labels else ("", [])
        for j, seg in enumerate(segments(audio)):
            lib.add(SourceItem(f"{f.source}:{f.parts[0]}:{j}", f.source_id, label, f"repo:{f.source}", f.licence,
                               meta={"path": f.parts[0], "labelled_by": f.labelled_by}, extra_labels=extra), seg)
        if progress is not None:
            progress(1)
    stats = s.stats()
    stats["undecodable"] = undecodable
    return lib, stats


def library_stats(lib: Library, stats: dict) -> dict:
    """stats plus what the library holds: items, minutes, classes."""
    labels = {lab for it in lib.items for lab in (it.label, *it.extra_labels) if lab}
    return {**stats, "items": len(lib.items), "minutes": round(sum(it.n_samples for it in lib.items) / SAMPLE_RATE / 60, 2),
            "recordings_kept": len({it.source_id for it in lib.items}), "classes": sorted(labels)}
