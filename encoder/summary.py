"""`python main.py model --config NAME`: parameter counts per tower and token counts per duration."""

from __future__ import annotations

import argparse

from encoder.frontend import FRAMES_PER_SECOND, n_tokens


def describe(name: str) -> str:
    from encoder.slap import create_model

    model = create_model(name)
    lines = [f"model {model.cfg.name}"]
    for part, n in model.param_counts().items():
        lines.append(f"  {part:<24} {n / 1e6:8.2f} M parameters")
    a = model.cfg.audio
    lines.append(f"  audio: width {a.width}, depth {a.depth}, heads {a.heads}, pattern {a.pattern}, "
                 f"local window {a.window_columns} columns, joint dim {a.embed_dim}")
    for seconds in (1, 10, 30):
        lines.append(f"  {seconds:>2} s of audio -> {n_tokens(seconds * FRAMES_PER_SECOND):4d} tokens")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py model", description=__doc__)
    p.add_argument("--config", default="slap-tiny", help="registered name (encoder/model_configs) or a JSON path")
    args = p.parse_args(argv)
    try:
        print(describe(args.config))
    except ValueError as e:
        print(f"main.py model: {e}")
        return 2
    return 0
