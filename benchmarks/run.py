"""Benchmark ``setol report`` against WeightWatcher 0.7.7 and the floor, in one command.

Set up once with ``bash benchmarks/setup.sh`` (WeightWatcher in its own venv),
then, with the project's venv active::

    python benchmarks/run.py [--repeats 3] [--workdir /tmp/setol-bench]

Every number is a whole process, from its start to its exit: wall time, and
peak resident memory from GNU time. The commands of one checkpoint run in
paired rounds, their order rotated each round, and the table shows medians
of the rounds (ratios are medians of the per-round ratios), because the
machine may be shared. The floor is ``benchmarks/floor.py``, run with the
default BLAS threads and with one, taking the faster per round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import prepare

HERE = Path(__file__).resolve().parent
SETOL = str(Path(sys.executable).with_name("setol"))
WW_PYTHON = str(HERE / ".venv" / "bin" / "python")
TIME = "/usr/bin/time"
ONE_THREAD = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_rss_mb: float
    returncode: int


@dataclass
class Row:
    """Medians of one checkpoint's paired rounds."""

    name: str
    rounds: list[dict[str, Run]] = field(default_factory=list)
    setol_layers: str = ""
    ww_layers: int = 0
    alpha: dict[str, Any] = field(default_factory=dict)

    def median(self, key: str, attribute: str = "seconds") -> float:
        return statistics.median(getattr(r[key], attribute) for r in self.rounds)

    def ratio(self, top: str, bottom: str, attribute: str = "seconds") -> float:
        return statistics.median(
            getattr(r[top], attribute) / getattr(r[bottom], attribute)
            for r in self.rounds
        )

    def floor_ratio(self) -> float:
        return statistics.median(
            r["setol"].seconds / min(r["floor"].seconds, r["floor_1thread"].seconds)
            for r in self.rounds
        )


def measure(command: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``command`` to its exit; return its wall time and peak RSS.

    GNU time reports the peak: a child forked straight from this process
    would start from this process's own peak (Linux keeps ``maxrss`` across
    fork and exec), while ``time`` itself is a few MB.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        done = subprocess.run(
            [TIME, "-f", "%M", "-o", rss.name, *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        seconds = time.perf_counter() - start
        kilobytes = int(rss.read().split()[-1])
    if done.returncode not in (0, 1):
        errors = done.stderr.decode(errors="replace")
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{errors[-3000:]}"
        )
    return Run(seconds, kilobytes / 1024, done.returncode)


def setol_command(path: Path, output: Path, *extra: str) -> list[str]:
    return [
        SETOL, "report", "--format", "json", "--no-progress", "--device", "cpu",
        "--output", str(output), *extra, str(path),
    ]  # fmt: skip


def paired_rounds(
    commands: dict[str, tuple[list[str], dict[str, str] | None]], repeats: int
) -> list[dict[str, Run]]:
    rounds = []
    names = list(commands)
    for index in range(repeats):
        order = names[index % len(names) :] + names[: index % len(names)]
        rounds.append({name: measure(*commands[name]) for name in order})
    return rounds


def alpha_agreement(setol_json: Path, ww_json: Path) -> dict[str, Any]:
    """Return the largest alpha difference over layers both tools fitted."""
    ours = {
        layer["name"]: layer
        for layer in json.loads(setol_json.read_text())["checkpoints"][0]["layers"]
    }
    theirs = json.loads(ww_json.read_text())["layers"]
    worst: tuple[float, str] = (0.0, "")
    matched = 0
    for layer in theirs:
        mine = ours.get(layer["name"] + ".weight") or ours.get(layer["name"])
        if mine is None or mine.get("alpha") is None or not layer["alpha"] > 0:
            continue
        matched += 1
        difference = abs(mine["alpha"] - layer["alpha"])
        if difference > worst[0]:
            worst = (difference, mine["name"])
    return {"matched": matched, "max_abs_diff": worst[0], "worst_layer": worst[1]}


def summary_layers(setol_json: Path) -> str:
    summary = json.loads(setol_json.read_text())["checkpoints"][0]["summary"]
    return f"{summary['analysed']}/{summary['layers']}"


def compare(
    target: prepare.Target, scratch: Path, repeats: int, extra: dict[str, Any]
) -> Row:
    """Run setol, WeightWatcher and the floor on ``target`` in paired rounds."""
    slug = "".join(c if c.isalnum() else "_" for c in target.name)
    setol_out = scratch / f"{slug}-setol.json"
    ww_out = scratch / f"{slug}-ww.json"
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "setol": (setol_command(target.setol_path, setol_out, "--no-cache"), None),
        "floor": (
            [sys.executable, str(HERE / "floor.py"), str(target.floor_file)],
            None,
        ),
        "floor_1thread": (
            [sys.executable, str(HERE / "floor.py"), str(target.floor_file)],
            ONE_THREAD,
        ),
    }
    if target.ww_folder is not None:
        commands["ww"] = (
            [WW_PYTHON, str(HERE / "ww_run.py"), str(target.ww_folder), str(ww_out)],
            None,
        )
    commands.update(extra)
    row = Row(target.name, paired_rounds(commands, repeats))
    row.setol_layers = summary_layers(setol_out)
    if target.ww_folder is not None:
        row.ww_layers = len(json.loads(ww_out.read_text())["layers"])
        row.alpha = alpha_agreement(setol_out, ww_out)
    return row


def cache_rounds(target: prepare.Target, scratch: Path, repeats: int) -> dict[str, Any]:
    """Time a cold and a warm run with a fresh cache directory each round."""
    ratios, cold, warm = [], [], []
    for _ in range(repeats):
        directory = Path(tempfile.mkdtemp(dir=scratch, prefix="cache-"))
        out = scratch / "cache.json"
        first = measure(
            setol_command(target.setol_path, out, "--cache-dir", str(directory))
        )
        second = measure(
            setol_command(target.setol_path, out, "--cache-dir", str(directory))
        )
        shutil.rmtree(directory)
        cold.append(first.seconds)
        warm.append(second.seconds)
        ratios.append(second.seconds / first.seconds)
    return {
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "warm_over_cold": statistics.median(ratios),
    }


def randomize_rounds(
    target: prepare.Target, scratch: Path, repeats: int
) -> dict[str, Any]:
    setol_out = scratch / "rand-setol.json"
    ww_out = scratch / "rand-ww.json"
    commands: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "setol": (
            setol_command(target.setol_path, setol_out, "--no-cache", "--randomize"),
            None,
        ),
        "ww": (
            [
                WW_PYTHON,
                str(HERE / "ww_run.py"),
                str(target.ww_folder),
                str(ww_out),
                "--mp-randomize",
            ],
            None,
        ),
    }
    row = Row(target.name, paired_rounds(commands, repeats))
    return {
        "checkpoint": target.name,
        "rounds": repeats,
        "setol_s": row.median("setol"),
        "ww_s": row.median("ww"),
        "ratio": row.ratio("setol", "ww"),
    }


def cuda_available() -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    except OSError:
        return False


def gpu_section(workdir: Path, scratch: Path, gpt2: prepare.Target) -> dict[str, Any]:
    """Time the CUDA path and compare its alphas with the CPU's."""
    results: dict[str, Any] = {}
    layer_set = prepare.layer_set_4096(workdir)
    for label, path in (("gpt2", gpt2.setol_path), ("4096x4096x64", layer_set)):
        cpu_out = scratch / f"gpu-{label}-cpu.json"
        gpu_out = scratch / f"gpu-{label}-cuda.json"
        cpu = measure(setol_command(path, cpu_out, "--no-cache"))
        gpu_command = setol_command(path, gpu_out, "--no-cache")
        gpu_command[gpu_command.index("cpu")] = "cuda"
        gpu = measure(gpu_command)
        results[label] = {
            "cpu_s": cpu.seconds,
            "cuda_s": gpu.seconds,
            "max_alpha_rel_diff": max_alpha_rel_diff(cpu_out, gpu_out),
        }
    return results


def max_alpha_rel_diff(first: Path, second: Path) -> float:
    def alphas(path: Path) -> dict[str, float]:
        layers = json.loads(path.read_text())["checkpoints"][0]["layers"]
        return {layer["name"]: layer["alpha"] for layer in layers if layer["alpha"]}

    a, b = alphas(first), alphas(second)
    return max(abs(a[name] - b[name]) / abs(a[name]) for name in a)


def print_table(rows: list[Row]) -> None:
    print(
        "| checkpoint | layers setol / WW | setol s | WW s | setol/WW | floor s "
        "| setol/floor | setol MB | WW MB | MB ratio | max abs alpha diff (layers) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        floor = min(row.median("floor"), row.median("floor_1thread"))
        has_ww = row.ww_layers > 0
        ww_s = f"{row.median('ww'):.2f}" if has_ww else "-"
        ratio = f"{row.ratio('setol', 'ww'):.3f}" if has_ww else "-"
        ww_mb = f"{row.median('ww', 'peak_rss_mb'):.0f}" if has_ww else "-"
        mb_ratio = f"{row.ratio('setol', 'ww', 'peak_rss_mb'):.2f}" if has_ww else "-"
        alpha = (
            f"{row.alpha['max_abs_diff']:.2g} ({row.alpha['matched']})"
            if has_ww
            else "-"
        )
        print(
            f"| {row.name} | {row.setol_layers} / {row.ww_layers or '-'} "
            f"| {row.median('setol'):.2f} | {ww_s} | {ratio} | {floor:.2f} "
            f"| {row.floor_ratio():.2f} | {row.median('setol', 'peak_rss_mb'):.0f} "
            f"| {ww_mb} | {mb_ratio} | {alpha} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="paired rounds (default: 3)"
    )
    parser.add_argument(
        "--randomize-repeats",
        type=int,
        default=1,
        help="paired rounds of the MP + randomization comparison (default: 1)",
    )
    parser.add_argument("--workdir", type=Path, default=prepare.default_workdir())
    parser.add_argument("--skip-randomize", action="store_true")
    args = parser.parse_args(argv)
    if not Path(WW_PYTHON).exists():
        print(
            f"{WW_PYTHON} is missing; run bash benchmarks/setup.sh first",
            file=sys.stderr,
        )
        return 2
    if not Path(TIME).exists():
        print(
            f"{TIME} is missing; install GNU time (apt-get install time)",
            file=sys.stderr,
        )
        return 2
    workdir: Path = args.workdir
    scratch = workdir / "runs"
    scratch.mkdir(parents=True, exist_ok=True)

    print(f"preparing checkpoints under {workdir} (untimed)", file=sys.stderr)
    minilm = prepare.minilm(workdir)
    mobilenet = prepare.mobilenet(workdir)
    gemma, gguf_path = prepare.gemma(workdir)
    gpt2 = prepare.gpt2_shaped(workdir)
    gpt2_double = prepare.gpt2_shaped(workdir, blocks=24, heads=2)

    rows = []
    load: list[tuple[str, tuple[float, float, float]]] = []
    for target in (minilm, mobilenet, gpt2, gemma):
        print(f"measuring {target.name}", file=sys.stderr)
        load.append((target.name, os.getloadavg()))
        extra = {}
        if target is gemma:
            gguf_out = scratch / "gguf-setol.json"
            extra["setol_gguf"] = (
                setol_command(gguf_path, gguf_out, "--no-cache"),
                None,
            )
        rows.append(compare(target, scratch, args.repeats, extra))
    results: dict[str, Any] = {"rows": [asdict(row) for row in rows]}
    load.append(("end of the comparison", os.getloadavg()))
    results["load_average_1_5_15_min"] = load

    print("measuring memory scaling and the cache", file=sys.stderr)
    memory = Row(
        "memory",
        paired_rounds(
            {
                "single": (
                    setol_command(gpt2.setol_path, scratch / "m1.json", "--no-cache"),
                    None,
                ),
                "double": (
                    setol_command(
                        gpt2_double.setol_path, scratch / "m2.json", "--no-cache"
                    ),
                    None,
                ),
            },
            args.repeats,
        ),
    )
    results["memory"] = {
        "single_mb": memory.median("single", "peak_rss_mb"),
        "double_mb": memory.median("double", "peak_rss_mb"),
        "double_over_single": memory.ratio("double", "single", "peak_rss_mb"),
        "file_mb": [
            gpt2.setol_path.stat().st_size / 2**20,
            gpt2_double.setol_path.stat().st_size / 2**20,
        ],
    }
    results["cache"] = cache_rounds(gpt2, scratch, args.repeats)
    if not args.skip_randomize:
        print("measuring MP + randomization", file=sys.stderr)
        results["randomize"] = [
            randomize_rounds(
                minilm, scratch, max(args.randomize_repeats, args.repeats)
            ),
            randomize_rounds(gemma, scratch, args.randomize_repeats),
        ]
    if cuda_available():
        print("measuring the CUDA path", file=sys.stderr)
        results["cuda"] = gpu_section(workdir, scratch, gpt2)

    print_table(rows)
    gemma_row = rows[-1]
    print(
        f"\nGemma 3 270M GGUF read directly by setol: "
        f"{gemma_row.median('setol_gguf'):.2f} s, "
        f"{gemma_row.median('setol_gguf', 'peak_rss_mb'):.0f} MB"
    )
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}, indent=2))
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfull results: {workdir / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
