"""The streaming baseline: N real-time streams through YAMNet (benchmarks.yamnet_baseline), in one
process, on the same audio file and thread count as the engine under benchmark.

    python -m benchmarks.yamnet_stream --audio F --streams 8 --seconds 10 [--threads 2]   (prints JSON)

Each stream starts at its own offset in the file, and the streams' hops are spread evenly over one
hop (as independently started capture workers are). Every `hop_s`, each stream's newest
`context_s` of audio is framed, patched (YAMNet's own front end) and scored, one 0.96 s patch per
ONNX call (the model's input is fixed at batch 1). The default context is one patch: YAMNet's
receptive field, what a YAMNet streamer would run. Latency is from the capture time of a hop's
last sample (the stream's virtual clock) to its scores; there is no transport, so this is a
lower bound on what a YAMNet engine would see. A stream more than one hop behind skips to its
newest hop (counted), as the engine does.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.yamnet_baseline import PATCH_SECONDS, YamNetBaseline, patches_covering
from encoder.frontend import SAMPLE_RATE


class YamNetStreams:
    """run(n_streams, seconds) -> {"latencies": [s], "hops": int, "skipped": int, "busy": s, "wall": s}
    over the measured hops (after warmup_s); busy: seconds spent scoring them."""

    def __init__(self, baseline: YamNetBaseline, audio: np.ndarray, hop_s: float = 0.5,
                 context_s: float = PATCH_SECONDS):
        self.baseline = baseline
        self.audio = np.asarray(audio, np.float32)
        self.hop_s = hop_s
        self.context = round(context_s * SAMPLE_RATE)  # samples scored per hop
        for _ in range(3):  # ONNX Runtime's first calls are slow: not part of any measurement
            self.baseline.run(patches_covering(self._segment(self.context)))

    def _segment(self, end: int) -> np.ndarray:
        """The `context` samples of the (looping) file that end at absolute sample `end`."""
        idx = np.arange(end - self.context, end) % len(self.audio)
        return self.audio[idx]

    def run(self, n_streams: int, seconds: float, warmup_s: float = 0.5, stop_on_skip: bool = False) -> dict:
        """stop_on_skip: end at the first hop skipped in the measured span (a soak has failed then)."""
        hop = self.hop_s
        rings = np.zeros((n_streams, self.context), np.float32)  # each stream's context, as a streamer holds it
        offsets = [i * len(self.audio) // max(n_streams, 1) for i in range(n_streams)]
        t0 = time.monotonic() + 0.05
        phases = [i * hop / n_streams for i in range(n_streams)]
        due = [(t0 + phases[i] + hop, i) for i in range(n_streams)]  # (capture time of the hop's last sample, stream)
        heapq.heapify(due)
        t_measure, t_end = t0 + warmup_s, t0 + warmup_s + seconds
        latencies: list[float] = []
        hops = skipped = 0
        busy, last_done = 0.0, t_end
        while due:
            when, i = heapq.heappop(due)
            if when >= t_end:
                continue  # this stream is done
            now = time.monotonic()
            if when > now:
                time.sleep(when - now)
            else:
                behind = int((now - when) // hop)  # newer hops of this stream already due: serve the newest
                if behind:
                    when += behind * hop
                    if when >= t_measure:
                        skipped += behind
                        if stop_on_skip:
                            last_done = now
                            break
            start = time.monotonic()
            end_sample = offsets[i] + round((when - t0 - phases[i]) * SAMPLE_RATE)
            rings[i] = self._segment(end_sample)
            self.baseline.run(patches_covering(rings[i]))
            done = time.monotonic()
            if when >= t_measure:
                latencies.append(done - when)
                hops += 1
                busy += done - start
                last_done = max(last_done, done)
            heapq.heappush(due, (when + hop, i))
        return {"latencies": latencies, "hops": hops, "skipped": skipped, "busy": busy,
                "wall": last_done - t_measure, "streams": n_streams}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.yamnet_stream", description=__doc__.split("\n")[0])
    p.add_argument("--audio", type=Path, required=True, help="16 kHz mono file (the benchmark's)")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--hop", type=float, default=0.5)
    p.add_argument("--context", type=float, default=PATCH_SECONDS, help="seconds scored per hop")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    args = p.parse_args(argv)
    import soundfile as sf

    from benchmarks.engine_proc import proc_status_bytes

    audio, rate = sf.read(str(args.audio), dtype="float32")
    assert rate == SAMPLE_RATE and audio.ndim == 1, (rate, audio.shape)
    sim = YamNetStreams(YamNetBaseline(args.cache_dir, args.threads), audio, args.hop, args.context)
    result = sim.run(args.streams, args.seconds)
    result["rss"] = proc_status_bytes("self", "VmRSS")
    result["hwm"] = proc_status_bytes("self", "VmHWM")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
