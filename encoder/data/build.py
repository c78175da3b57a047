"""Build the training corpus: source library -> source-held-out splits -> mixed clips -> shards.

    python -m encoder.data.build [--out DIR] [--hours H] [--seed S] [--tiny]
                                 [--repos REPOS [--esc50 ESC50_DIR]] [--packs [DEB ...]] [--no-synth]

--repos adds the real recordings of the GitHub sources checked out under REPOS (encoder/data/
repos.py), minus the clip set's held-out recordings; --esc50 (a checkout of
saraalemadi/DroneAudioDataset, or ESC-50) is read only to drop training files that share a
Freesound id with ESC-50. Every recorded item (repositories and Debian packs, not the renders)
becomes one clean clip of its own (no mixing, no bed; `kind` "clean"), then mixtures fill the
corpus up to --hours (`kind` "mix").

Layout of the output folder:
    shard-00000.npy ...   int16 16 kHz mono audio of consecutive clips (np.load(mmap_mode="r"))
    manifest.jsonl        one clip a line: id, shard, offset, n_samples, duration_s, captions,
                          labels, events [{label, onset_s, offset_s}], source_ids, split, background,
                          kind ("mix" | "clean"), origin (the file of a clean clip); an unlabelled
                          recording's clean clip has no labels, events or captions
    classes.json          class -> names (caption phrases), prompts, group, source counts per split
    build_info.json       config, counts, hours, sources with licences (repo_sources: per GitHub
                          source its repository, licences, recordings and what was dropped), build time

Source libraries are cached under cache/sources/library by a hash of their recipe, and the
downloaded .debs under cache/sources/debs, so a rebuild only redoes what changed. The corpus is
written to a temporary folder and renamed when complete; a finished corpus with the same config
is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import packs, render, repos
from .captions import make_captions
from .labels import CLASSES
from .mix import MixedClip, Mixer, clean_clip
from .sources import SAMPLE_RATE, Library, assign_splits, stable_hash
from .teacher import build_teacher_scores

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_VERSION = 1  # bump when the output of an unchanged config changes


@dataclass
class BuildConfig:
    out: Path = REPO_ROOT / "cache" / "corpus"
    cache: Path = REPO_ROOT / "cache" / "sources"  # debs, rendered libraries, YAMNet model
    hours: float = 3.0  # total clip audio, train + dev
    seed: int = 0
    tiny: bool = False  # fluidsynth + espeak only, a few minutes of clips: for CI
    dev_fraction: float = 0.1  # share of source recordings (and of clips) held out as dev
    variants: int = 6  # fluidsynth renders per preset (pitch, velocity, length vary)
    speech_per_voice: int = 3  # utterances per TTS voice and style
    packs: tuple[str, ...] | None = None  # Debian packs to use; None = all of packs.PACKS
    yamnet_threshold: float = 0.55  # mean patch score needed to keep a YAMNet pseudo-label
    captions_per_clip: int = 4
    shard_mb: int = 64  # int16 audio per shard file
    workers: int = 2
    repos: Path | None = None  # checkouts of the GitHub sources (encoder/data/repos.py)
    esc50: Path | None = None  # an ESC-50 copy, read only for its Freesound ids (dedup)
    synth: bool = True  # fluidsynth + TTS renders; False: real recordings only

    def __post_init__(self) -> None:
        self.out, self.cache = Path(self.out), Path(self.cache)
        self.repos = Path(self.repos) if self.repos is not None else None
        self.esc50 = Path(self.esc50) if self.esc50 is not None else None
        if self.tiny:
            self.packs = ()
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.hours <= 0:
            raise ValueError(f"hours must be > 0, got {self.hours}")

    @classmethod
    def tiny_config(cls, **kw) -> BuildConfig:
        """A few minutes of clips from one render per preset and a few voices (CI sized)."""
        return cls(**{"hours": 0.1, "tiny": True, "variants": 1, "speech_per_voice": 1, **kw})

    def pack_specs(self) -> list[packs.PackSpec]:
        if self.packs is None:
            return list(packs.PACKS)
        known = {p.deb: p for p in packs.PACKS}
        unknown = set(self.packs) - set(known)
        if unknown:
            raise ValueError(f"unknown sample packs: {sorted(unknown)}; known: {sorted(known)}")
        return [known[d] for d in self.packs]

    def corpus_key(self, repos_key: str = "") -> str:
        """repos_key: repos.Scan.key (what the GitHub sources contribute), "" without --repos. Paths
        are not part of the key (what is read from them is), and the defaults of the options
        added for the GitHub sources leave the key of a corpus without them as it was."""
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "cache", "workers", "repos", "esc50")}
        if d["synth"]:
            del d["synth"]
        # The labelling tables are part of the recipe: editing them must invalidate the corpus.
        parts = [BUILD_VERSION, json.dumps(d, sort_keys=True, default=str),
                 packs.LIBRARY_VERSION, packs.LABEL_RULES, render.list_presets()]
        return stable_hash(*parts, repos_key) if repos_key else stable_hash(*parts)


def _cached(stem: Path, make: Callable[[], Library]) -> Library:
    if Library.cached(stem):
        return Library.load(stem)
    lib = make()
    lib.save(stem)
    return lib


def collect_sources(cfg: BuildConfig, scan: repos.Scan | None = None) -> tuple[Library, dict]:
    """The merged source library of all backends, and per-backend stats for build_info."""
    libdir = cfg.cache / "library"
    stats: dict = {}
    merged = Library()
    if cfg.synth:
        recipes = [render.make_recipe(p, v, cfg.seed) for p in render.list_presets()
                   for v in range(cfg.variants)]
        with tqdm(total=len(recipes), desc="fluidsynth", unit="render", leave=False) as bar:
            fluid = _cached(libdir / f"fluidsynth-{stable_hash(*(r for r in recipes))}",
                            lambda: render.render_fluidsynth(recipes, cfg.workers, bar.update))
        speech = render.speech_recipes(cfg.speech_per_voice, cfg.seed, tiny=cfg.tiny)
        with tqdm(total=len(speech), desc="speech", unit="utt", leave=False) as bar:
            tts = _cached(libdir / f"speech-{stable_hash(*(r for r in speech))}",
                          lambda: render.render_speech(speech, cfg.workers, bar.update))
        for lib in (fluid, tts):
            merged.extend(lib)

    specs = cfg.pack_specs()
    if specs:
        yam = packs.YamNet(cfg.cache)
        esc50_ids = frozenset()  # packs whose credits name Freesound sources drop ESC-50's recordings
        if cfg.esc50 is not None and any(spec.credits for spec in specs):
            from encoder import esc50

            esc50_ids = frozenset(esc50.freesound_ids(cfg.esc50))

        def one(spec: packs.PackSpec) -> Library:
            key = stable_hash(spec, packs.LIBRARY_VERSION, packs.LABEL_RULES, cfg.yamnet_threshold,
                             packs.MAX_ITEM_S, *((packs.MAX_MUSIC_S,) if spec.music else ()),
                             *((sorted(esc50_ids),) if spec.credits else ()))
            stem = libdir / f"pack-{spec.deb}-{key}"
            stats_path = stem.with_name(stem.name + ".stats.json")

            def make() -> Library:
                lib, st = packs.build_pack(spec, cfg.cache / "debs", yam, cfg.yamnet_threshold,
                                           esc50_ids=esc50_ids)
                stats_path.parent.mkdir(parents=True, exist_ok=True)
                stats_path.write_text(json.dumps(st))
                return lib

            lib = _cached(stem, make)
            stats[f"pack:{spec.deb}"] = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            return lib

        with ThreadPoolExecutor(cfg.workers) as pool, \
                tqdm(total=len(specs), desc="sample packs", unit="deb", leave=False) as bar:
            for lib in pool.map(one, specs):
                merged.extend(lib)
                bar.update(1)
    for source in scan.sources if scan is not None else ():
        stem = libdir / f"repo-{source.spec.source}-{source.key}"
        stats_path = stem.with_name(stem.name + ".stats.json")

        def make(source: repos.SourceScan = source, stats_path: Path = stats_path) -> Library:
            with tqdm(total=len(source.files), desc=source.spec.source, unit="file", leave=False) as bar:
                lib, st = repos.build_library(source, bar.update)
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            stats_path.write_text(json.dumps(st))
            return lib

        lib = _cached(stem, make)
        st = json.loads(stats_path.read_text()) if stats_path.exists() else source.stats()
        stats[f"repo:{source.spec.source}"] = repos.library_stats(lib, st)
        merged.extend(lib)
    return merged, stats


class ShardWriter:
    """Appends int16 clips to shard-XXXXX.npy files of about `max_samples` samples each."""

    def __init__(self, out: Path, max_samples: int) -> None:
        self.out, self.max_samples = out, max_samples
        self.index, self.chunks, self.n = 0, [], 0

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.npy"

    def add(self, audio16: np.ndarray) -> tuple[str, int]:
        """Store a clip; returns (shard file name, offset in samples)."""
        if self.n and self.n + len(audio16) > self.max_samples:
            self.flush()
        where = (self.name, self.n)
        self.chunks.append(audio16)
        self.n += len(audio16)
        return where

    def flush(self) -> None:
        if self.chunks:
            np.save(self.out / self.name, np.concatenate(self.chunks))
            self.index, self.chunks, self.n = self.index + 1, [], 0


def _class_table(lib: Library, split_of: dict[str, str]) -> dict:
    table = {}
    for label in sorted({lab for it in lib.items for lab in it.labels}):
        c = CLASSES[label]
        sids = {it.source_id for it in lib.items if label in it.labels}
        table[label] = {
            "names": list(c.phrases()),
            "prompts": [f"the sound of {n}" for n in c.names],
            "group": c.group,
            "countable": c.countable,
            "ambience": c.ambience,
            "sources": {s: sum(split_of[x] == s for x in sids) for s in ("train", "dev")},
            "items": sum(label in it.labels for it in lib.items),
        }
    return table


def _source_summary(lib: Library, split_of: dict[str, str]) -> dict:
    out: dict = {}
    for it in lib.items:
        b = out.setdefault(it.backend, {"licence": it.licence, "items": 0, "seconds": 0.0,
                                        "source_ids": set(), "labels": set(), "licences": set()})
        b["items"] += 1
        b["seconds"] += it.n_samples / SAMPLE_RATE
        b["source_ids"].add(it.source_id)
        b["labels"].update(it.labels)
        b["licences"].add(it.licence)
    for b in out.values():
        b["dev_source_ids"] = sum(split_of[s] == "dev" for s in b["source_ids"])
        b["source_ids"] = len(b["source_ids"])
        b["labels"] = sorted(b["labels"])
        b["licences"] = sorted(b["licences"])
        b["seconds"] = round(b["seconds"], 1)
    return out


def _record(clip_id: str, split: str, clip: MixedClip, rng: random.Random, writer: ShardWriter,
            n_captions: int, kind: str, origin: str | None = None) -> dict:
    """Store the clip's audio and return its manifest line."""
    audio16 = np.round(np.clip(clip.audio, -1, 1) * 32767).astype(np.int16)
    shard, offset = writer.add(audio16)
    record = {
        "id": clip_id,
        "shard": shard,
        "offset": offset,
        "n_samples": len(audio16),
        "duration_s": round(len(audio16) / SAMPLE_RATE, 3),
        # an unlabelled recording has nothing to caption: its targets come from the teacher
        "captions": make_captions(rng, clip.events, clip.background, n_captions) if clip.all_events else [],
        "labels": clip.labels,
        "events": clip.all_events,
        "source_ids": clip.source_ids,
        "split": split,
        "background": {k: v for k, v in clip.background.items()},
        "kind": kind,
    }
    if origin is not None:
        record["origin"] = origin
    return record


def scan_repos(cfg: BuildConfig) -> repos.Scan | None:
    """What the GitHub sources under cfg.repos contribute (None without --repos)."""
    if cfg.repos is None:
        return None
    if cfg.esc50 is None:
        print("warning: --esc50 not given: training files that share a Freesound id with ESC-50 cannot be "
              "dropped (pass --esc50 REPOS/saraalemadi+DroneAudioDataset)", file=sys.stderr)
        return repos.scan(cfg.repos, None)
    from encoder import esc50

    return repos.scan(cfg.repos, esc50.freesound_ids(cfg.esc50))


def build_corpus(cfg: BuildConfig) -> Path:
    """Build (or reuse) the corpus described by cfg; returns its folder."""
    t0 = time.time()
    scan = scan_repos(cfg)
    key = cfg.corpus_key(scan.key if scan is not None else "")
    info_path = cfg.out / "build_info.json"
    if info_path.exists() and json.loads(info_path.read_text()).get("key") == key:
        print(f"corpus up to date: {cfg.out}", file=sys.stderr)
        return cfg.out
    lib, pack_stats = collect_sources(cfg, scan)
    split_of = assign_splits(lib.items, cfg.dev_fraction, cfg.seed)
    mixer = Mixer(lib, split_of)
    has_dev = bool(mixer.labels("dev"))

    tmp = cfg.out.with_name(cfg.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = ShardWriter(tmp, cfg.shard_mb * 2**20 // 2)
    target_s = cfg.hours * 3600
    total_s, counts, seconds, kinds = 0.0, Counter(), Counter(), Counter()
    label_counts: Counter = Counter()
    # every recorded item (repositories and Debian packs; not the fluidsynth or espeak renders) is
    # also one clean clip alone: real sounds without a bed, as users point the engine at them
    real = [it for it in lib.items if it.backend.startswith(("repo:", "pack:"))]
    with open(tmp / "manifest.jsonl", "w") as manifest, \
            tqdm(total=round(target_s), desc="clean clips, then mixing", unit="s") as bar:

        def emit(record: dict) -> None:
            nonlocal total_s
            manifest.write(json.dumps(record) + "\n")
            counts[record["split"]] += 1
            seconds[record["split"]] += record["n_samples"] / SAMPLE_RATE
            kinds[record["kind"]] += 1
            label_counts.update(record["labels"])
            total_s += record["n_samples"] / SAMPLE_RATE
            bar.update(max(0, min(round(target_s), round(total_s)) - bar.n))

        for j, item in enumerate(real):
            rng = random.Random(stable_hash(cfg.seed, "clean", item.item_id))
            split = split_of[item.source_id]
            emit(_record(f"{split}-clean-{j:06d}", split, clean_clip(rng, lib, item), rng, writer,
                         cfg.captions_per_clip, "clean", item.meta.get("path")))
        if real and total_s >= target_s:
            print(f"warning: the {len(real)} clean real-recording clips alone are {total_s / 3600:.2f} h, "
                  f"more than --hours {cfg.hours}: no mixtures written", file=sys.stderr)
        i = 0
        while total_s < target_s and mixer.labels("train"):
            rng = random.Random(stable_hash(cfg.seed, "clip", i))
            split = "dev" if has_dev and rng.random() < cfg.dev_fraction else "train"
            emit(_record(f"{split}-{i:07d}", split, mixer.make_clip(rng, split), rng, writer,
                         cfg.captions_per_clip, "mix"))
            i += 1
    writer.flush()
    if not counts:
        raise ValueError("no source sounds to make clips from (no --repos sources, --no-synth and no --packs)")

    (tmp / "classes.json").write_text(json.dumps(_class_table(lib, split_of), indent=1))
    info = {
        "key": key,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "sample_rate": SAMPLE_RATE,
        "clips": dict(counts),
        "hours": {k: round(v / 3600, 4) for k, v in seconds.items()},
        "n_classes": len({lab for it in lib.items for lab in it.labels}),
        "clips_by_kind": dict(kinds),
        "clips_per_label": dict(sorted(label_counts.items())),
        "source_items": len(lib.items),
        "source_ids": {s: sum(v == s for v in split_of.values()) for s in ("train", "dev")},
        "sources": _source_summary(lib, split_of),
        "pack_stats": {k: v for k, v in pack_stats.items() if not k.startswith("repo:")},
        "repo_sources": {k.removeprefix("repo:"): v for k, v in pack_stats.items() if k.startswith("repo:")},
        "esc50_dedup": cfg.esc50 is not None,
        "build_seconds": round(time.time() - t0, 1),
    }
    (tmp / "build_info.json").write_text(json.dumps(info, indent=1))
    if cfg.out.exists():
        shutil.rmtree(cfg.out)
    os.replace(tmp, cfg.out)
    return cfg.out


def parse_args(argv: list[str] | None) -> BuildConfig:
    p = argparse.ArgumentParser(prog="python -m encoder.data.build", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=BuildConfig.out, help="corpus folder (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=BuildConfig.cache, help="source cache folder")
    p.add_argument("--hours", type=float, default=None, help="total clip hours (default 3; tiny 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CI corpus: fluidsynth + espeak only, minutes")
    p.add_argument("--packs", nargs="*", default=None,
                   help="Debian sample packs (default: all of them; --packs with no names: none)")
    p.add_argument("--variants", type=int, default=None, help="fluidsynth renders per preset")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repos", type=Path, default=None,
                   help="folder of GitHub source checkouts (REPOS/<name>, <owner>+<name> or <owner>/<name>)")
    p.add_argument("--esc50", type=Path, default=None,
                   help="ESC-50 copy (e.g. REPOS/saraalemadi+DroneAudioDataset), read only to drop Freesound duplicates")
    p.add_argument("--no-synth", dest="synth", action="store_false", help="no fluidsynth / TTS renders")
    a = p.parse_args(argv)
    kw = {"out": a.out, "cache": a.cache, "seed": a.seed, "workers": a.workers, "repos": a.repos,
          "esc50": a.esc50, "synth": a.synth}
    if a.hours is not None:
        kw["hours"] = a.hours
    if a.variants is not None:
        kw["variants"] = a.variants
    if a.packs is not None:
        kw["packs"] = tuple(a.packs)
    return BuildConfig.tiny_config(**kw) if a.tiny else BuildConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        out = build_corpus(cfg)
        build_teacher_scores(out, cfg.cache)
    except (render.ToolMissing, RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    info = json.loads((out / "build_info.json").read_text())
    print(f"{out}: {sum(info['clips'].values())} clips, {sum(info['hours'].values()):.2f} h, "
          f"{info['n_classes']} classes, built in {info['build_seconds']} s")
    return 0


def clipset_main(argv: list[str]) -> int:
    """`python main.py data clipset --from REPOS --out cache/clipset`: the held-out real-recording
    clip set (encoder.clipset)."""
    from encoder import clipset

    p = argparse.ArgumentParser(prog="main.py data clipset", description=clipset.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="root", required=True, type=Path, help="folder holding the repository checkouts")
    p.add_argument("--out", type=Path, default=Path("cache/clipset"))
    args = p.parse_args(argv)
    try:
        items = clipset.build(args.root, args.out)
    except FileNotFoundError as e:
        print(f"main.py data clipset: {e}", file=sys.stderr)
        return 2
    sources = sorted({i.source for i in items})
    print(f"{len(items)} clips, {len({i.label for i in items})} classes, "
          f"{sum(i.seconds for i in items) / 60:.1f} min from {', '.join(sources)} -> {args.out}")
    return 0


def cli(argv: list[str]) -> int:
    """`python main.py data build ...` (the same as `python -m encoder.data.build ...`) and
    `python main.py data teacher [--corpus DIR]` (YAMNet teacher scores, encoder.data.teacher)."""
    if argv and argv[0] == "teacher":
        from encoder.data.teacher import main as teacher_main

        return teacher_main(argv[1:])
    if argv and argv[0] == "clipset":
        return clipset_main(argv[1:])
    if not argv or argv[0] != "build":
        print("usage: python main.py data build [--out DIR] [--hours H] [--tiny] [--repos DIR [--esc50 DIR]] ..."
              " | data teacher [--corpus DIR]"
              " | data clipset --from REPOS [--out DIR]", file=sys.stderr)
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
