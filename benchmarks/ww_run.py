"""Run WeightWatcher 0.7.7 on a model folder and write its per-layer results as JSON.

Run with the benchmark's own venv (``benchmarks/setup.sh``), never the
project's: ``benchmarks/.venv/bin/python benchmarks/ww_run.py FOLDER OUT.json``.
``--mp-randomize`` adds ``mp_fit=True, randomize=True``.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", help="folder holding model.safetensors or pytorch_model.bin"
    )
    parser.add_argument("output", help="JSON file to write")
    parser.add_argument("--mp-randomize", action="store_true")
    args = parser.parse_args(argv)

    import weightwatcher

    watcher = weightwatcher.WeightWatcher(model=args.folder)
    extra = {"mp_fit": True, "randomize": True} if args.mp_randomize else {}
    details = watcher.analyze(detX=True, **extra)
    layers = [
        {
            "name": str(row["longname"]),
            "alpha": float(row["alpha"]),
            "N": int(row["N"]),
            "M": int(row["M"]),
        }
        for _, row in details.iterrows()
    ]
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump({"version": weightwatcher.__version__, "layers": layers}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
