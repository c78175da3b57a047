"""Command line entry point.

    python main.py --source mic|file:PATH|synth|net:URL [--config F]   run the engine
    python main.py model --config slap-tiny                              model summary
    python main.py data build [--out DIR] [--hours H]                    build the training corpus
    python main.py train ... | stream-tune ... | eval ... | export ... | bench ...  (see each --help)
    python main.py search "a dog barking" [--since 1d] [--stream NAME]   rank past audio by text
    python main.py web [--host H --port P --token T]                     the web view

Each command lives in its own module and is imported only when used, so a command never
pays for another's imports.
"""

from __future__ import annotations

import importlib
import sys

# command -> "module:function"; the function takes argv (list[str]) and returns an exit code
COMMANDS: dict[str, str] = {
    "model": "encoder.summary:main",
    "data": "encoder.data.build:cli",
    "train": "encoder.train:main",
    "stream-tune": "encoder.stream_tune:main",
    "eval": "streamer.cli:eval_main",
    "export": "encoder.export:main",
    "bench": "benchmarks.cli:main",
    "run": "streamer.cli:run_main",
    "tag": "streamer.cli:tag_main",
    "subscribe": "streamer.cli:subscribe_main",
    "events": "streamer.cli:events_main",
    "config": "streamer.cli:config_main",
    "search": "streamer.search:main",
    "web": "streamer.web.server:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]  # `python main.py --source mic` runs the engine
    if argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0
    target = COMMANDS.get(argv[0])
    if target is None:
        print(f"main.py: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = target.split(":")
    try:
        entry = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        print(f"main.py: command {argv[0]!r} is not available in this build ({e})", file=sys.stderr)
        return 2
    return int(entry(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
