"""Capture workers: one process per audio source, pushing wire frames to the engine over ZeroMQ.

    python -m streamer.capture mic   --stream kitchen [--device N] [--list-devices]
    python -m streamer.capture file  --stream demo clip.flac [--fast] [--loop] [--start-delay S]
    python -m streamer.capture synth --stream test --event 4.0:beep [--duration S] [--seed N]
    python -m streamer.capture net   --stream cam1 --url-env CAM1_URL [--stall-timeout S]

Every worker takes --endpoint (default tcp://127.0.0.1:5555), --frame-ms (100), --format (int16).
`pusher.Pusher` does the framing, numbering, time stamps and sending; see `cli` for exit codes.
"""
