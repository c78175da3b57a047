"""python main.py bench <scenario> [options]: one module per scenario, imported only when run.

    python main.py bench encoder [--quick]     encoder latency and throughput vs YAMNet
    python main.py bench fuzz [--messages N]   malformed wire messages through the receive path, by outcome
    python main.py bench soak [--streams 32 --minutes 10]   RSS growth and deadline misses over a long run
    python main.py bench capacity [--quick]    most real-time streams held, per backend, vs YAMNet
    python main.py bench latency [--quick]     end-to-end latency percentiles at 1 and 8 streams, vs YAMNet
    python main.py bench memory [--quick]      engine peak RSS at 1, 8 and 32 streams, vs YAMNet
"""

from __future__ import annotations

import importlib
import sys

# scenario -> "module:function"; the function takes argv (list[str]) and returns an exit code
SCENARIOS: dict[str, str] = {
    "encoder": "benchmarks.encoder_bench:main",
    "fuzz": "benchmarks.fuzz_bench:main",
    "soak": "benchmarks.soak:main",
    "capacity": "benchmarks.capacity:main",
    "latency": "benchmarks.latency:main",
    "memory": "benchmarks.memory:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nscenarios: " + ", ".join(SCENARIOS))
        return 0 if argv else 2
    target = SCENARIOS.get(argv[0])
    if target is None:
        print(f"bench: unknown scenario {argv[0]!r}; expected one of: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    module, func = target.split(":")
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
