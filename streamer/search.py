"""Text search over past audio: "when did a dog bark?" over the embedding store.

    python main.py search "a dog barking" [--since 1d] [--stream NAME] [--top 5] [--json]

The query goes through the same text tower, prompt cache and calibration as the matcher's prompts
(streamer.matcher: sigmoid(scale * cos + bias) of the unit embeddings), against each stored hop's
global embedding (streamer.embedding_store). Hops are ranked per stream and turned into ranges:

    1. score every hop of the stream (brute force: one (N, E) x (E,) product);
    2. take the best hop not yet used; grow its run over neighbouring windows (same run, windows
       overlapping or touching) while their score stays >= median + REL_THRESHOLD * (peak - median);
    3. the run's time: each window holds the sound, so it lies where the windows agree: between the
       end of the first window and the start of the last (widened to MIN_RANGE_S), within their union;
    4. a window overlapping the run's windows may hold the same sound: none starts another range;
    5. repeat until `top` ranges.

Brute force scales linearly: every hop in the time range is read and scored per query. Measured
on this project's 2-core machine (docs/search.md): 100 k hops of 256-d fp16 (51 MB of vectors;
14 hours of one stream at a 0.5 s hop) take 0.5 s to read from SQLite and 0.2 s to score; 1 M hops
(512 MB; ~6 stream-days) 6 s and 1-1.6 s. So brute force serves up to ~1 M hops per query; past
that (or where a query must answer in well under a second beyond ~200 k hops), a vector index
(faiss IVF-PQ or HNSW over the fp16 vectors, one per day of audio) would take over the ranking.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from encoder.frontend import SECONDS_PER_COLUMN
from streamer.embedding_store import Hops, other_models, read_hops
from streamer.matcher import Calibration, PromptCache, _unit, prompt_embeddings

log = logging.getLogger("streamer.search")

REL_THRESHOLD = 0.5  # a neighbour joins a peak's range while above half-way from the median to the peak
MIN_RANGE_S = 2.0  # a range is at least this long (the windows' agreement can shrink to a point)
DEFAULT_TOP = 5


@dataclass(frozen=True)
class Range:
    """A time range of one stream that matches the query. Stream times: seconds on the run's stream
    clock (for a file, the position in it); wall times: Unix seconds."""

    stream: str
    run: int
    start_s: float
    end_s: float
    wall_start: float
    wall_end: float
    score: float  # the peak hop's calibrated score, in [0, 1]
    hops: int  # windows merged into it


def rank_ranges(hops: Hops, scores: np.ndarray, top: int = DEFAULT_TOP) -> dict[str, list[Range]]:
    """hops (ordered by stream, run, start_col) and their scores (N,) -> per stream, the best `top` ranges."""
    out: dict[str, list[Range]] = {}
    for stream in dict.fromkeys(hops.stream.tolist()):
        idx = np.flatnonzero(hops.stream == stream)
        out[stream] = _stream_ranges(hops, idx, scores[idx], top)
    return out


def _stream_ranges(hops: Hops, idx: np.ndarray, s: np.ndarray, top: int) -> list[Range]:
    run, start, end = hops.run[idx], hops.start_col[idx], hops.end_col[idx]
    # window i continues window i-1: same run and it starts before (or where) the previous one ends
    joined = np.zeros(len(idx), bool)
    joined[1:] = (run[1:] == run[:-1]) & (start[1:] <= end[:-1])
    median = float(np.median(s))
    used = np.zeros(len(idx), bool)
    ranges = []
    for peak in np.argsort(-s, kind="stable"):
        if len(ranges) >= top:
            break
        if used[peak]:
            continue
        keep = median + REL_THRESHOLD * (s[peak] - median)
        lo = hi = peak
        while lo > 0 and joined[lo] and not used[lo - 1] and s[lo - 1] >= keep:
            lo -= 1
        while hi + 1 < len(idx) and joined[hi + 1] and not used[hi + 1] and s[hi + 1] >= keep:
            hi += 1
        a, b = end[lo] * SECONDS_PER_COLUMN, start[hi] * SECONDS_PER_COLUMN  # first window's end, last's start
        t0, t1 = min(a, b), max(a, b)
        if t1 - t0 < MIN_RANGE_S:
            mid = (t0 + t1) / 2
            t0, t1 = mid - MIN_RANGE_S / 2, mid + MIN_RANGE_S / 2
        union0, union1 = start[lo] * SECONDS_PER_COLUMN, end[hi] * SECONDS_PER_COLUMN
        t0, t1 = max(t0, union0), min(t1, union1)
        # a window overlapping the run's windows may hold this same sound: none starts another range
        used |= (run == run[peak]) & (start < end[hi]) & (end > start[lo])
        used[lo:hi + 1] = True
        # wall clock: the stream clock's offset in the window nearest the peak
        i = idx[peak]
        offset = hops.wall_start[i] - hops.start_col[i] * SECONDS_PER_COLUMN
        t0, t1, offset = float(t0), float(t1), float(offset)
        ranges.append(Range(str(hops.stream[i]), int(run[peak]), round(t0, 2), round(t1, 2),
                            round(offset + t0, 3), round(offset + t1, 3), round(float(s[peak]), 4), int(hi - lo + 1)))
    return ranges


class Searcher:
    """The query side: a text tower (a backend's embed_text), its prompt cache and calibration.

    backend: an encoder runtime (encoder.runtime); model: its id as the engine writes it (name@hash8).
    """

    def __init__(self, backend, cache_dir: str | Path | None = None):
        self.backend = backend
        manifest = getattr(backend, "manifest", {})
        self.model_hash = manifest.get("model_hash", "unknown")
        self.model_id = f"{manifest.get('model_name', 'slap')}@{self.model_hash[:8]}"
        cal = manifest.get("calibration")
        self.calibration = Calibration.from_manifest(cal) if cal else Calibration(10.0, -5.0)
        self.cache = PromptCache(cache_dir)

    def embed(self, query: str) -> np.ndarray:
        """(E,) unit text embedding, exactly as the matcher embeds a one-sentence prompt."""
        return prompt_embeddings([query], self.model_hash, self.backend.embed_text, self.cache)[0]

    def score(self, hops: Hops, query: str) -> np.ndarray:
        """(N,) calibrated scores of the hops for the query."""
        if not len(hops):
            return np.zeros(0, np.float32)
        q = self.embed(query).astype(np.float32)
        cos = np.empty(len(hops), np.float32)
        for i in range(0, len(hops), 65536):  # fp16 -> fp32 in blocks: memory stays at ~64 MB
            cos[i:i + 65536] = _unit(hops.emb[i:i + 65536].astype(np.float32)) @ q
        return self.calibration(cos)

    def search(self, store: str | Path, query: str, *, since: float | None = None, until: float | None = None,
               stream: str | None = None, top: int = DEFAULT_TOP) -> dict[str, list[Range]]:
        """Per stream, the `top` best ranges for the query, best first (streams by their best range)."""
        hops = read_hops(store, self.model_id, since=since, until=until, stream=stream)
        ranked = rank_ranges(hops, self.score(hops, query), top)
        return dict(sorted(ranked.items(), key=lambda kv: -kv[1][0].score if kv[1] else 0.0))


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str]) -> int:
    from streamer.cli import DEFAULT_CONFIG, _open_backend, _parse_since
    from streamer.config import ConfigError, load_config

    p = argparse.ArgumentParser(prog="main.py search", description="Rank past audio by a text query.")
    p.add_argument("query", help='plain language, e.g. "glass breaking"')
    p.add_argument("--since", help="Unix seconds, ISO time, or relative (10m, 2h, 1d)")
    p.add_argument("--until", help="as --since")
    p.add_argument("--stream", help="only this stream")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help="ranges per stream")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the engine's config (store, model)")
    p.add_argument("--store", type=Path, help="embedding store (default: the config's)")
    p.add_argument("--json", action="store_true", help="one JSON line per range")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        since = _parse_since(args.since) if args.since else None
        until = _parse_since(args.until) if args.until else None
    except (ConfigError, ValueError) as e:
        print(f"main.py search: {e}".splitlines()[0], file=sys.stderr)
        return 2
    store = args.store or cfg.outputs.embeddings_path
    if store is None or not Path(store).exists():
        print(f"main.py search: no embedding store at {store} (outputs.embeddings in the config)", file=sys.stderr)
        return 2
    backend = _open_backend(cfg, "main.py search")
    if backend is None:
        return 2
    searcher = Searcher(backend, cfg.model.cache_dir)
    import sqlite3

    try:
        results = searcher.search(store, args.query, since=since, until=until, stream=args.stream, top=args.top)
        others = other_models(store, searcher.model_id)
    except sqlite3.Error as e:
        print(f"main.py search: {store}: {e}", file=sys.stderr)
        return 2
    if others:
        print(f"main.py search: skipped hops of other models ({', '.join(others)}): "
              f"their embeddings do not match {searcher.model_id}'s text tower", file=sys.stderr)
    if not results:
        print(f"main.py search: no hops of {searcher.model_id} in {store} for that time and stream", file=sys.stderr)
        return 1
    for stream, ranges in results.items():
        if not args.json:
            print(f"{stream}:")
        for rank, r in enumerate(ranges, 1):
            if args.json:
                print(json.dumps({"rank": rank, **asdict(r)}))
            else:
                print(f"  {rank}. {_when(r.wall_start)} .. {_when(r.wall_end)[11:]} UTC  stream "
                      f"{r.start_s:8.2f}-{r.end_s:8.2f} s  score={r.score:.3f}  ({r.hops} hops)")
    return 0
