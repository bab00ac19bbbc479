"""Reproduce SETOL's MLP3 learning-rate experiment and lint every trained checkpoint.

Trains the 784-300-100-10 MLP with plain SGD (batch 32, learning rate 0.01
times each multiplier) for several seeds, saves each final model as
safetensors, analyses it with ``pytest_setol.analyze(..., randomize=True)``,
and writes into ``--out``:

- ``runs.csv``: one row per run and weight matrix, skipped ones included;
- ``summary.csv`` and ``summary.md``: mean and standard deviation over seeds;
- ``mlp3.png``: alpha, erg_delta and rand_num_spikes of fc1 and fc2, and the
  errors, against the multiplier.

    python examples/mlp3/run.py            # the full experiment
    python examples/mlp3/run.py --quick    # one seed, two multipliers, seconds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import importlib.util
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlp3_data import Dataset

HERE = Path(__file__).resolve().parent
DATASETS = ("teacher-student", "digits")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one experiment. The defaults are the full run."""

    datasets: tuple[str, ...] = DATASETS
    seeds: int = 5
    multipliers: tuple[float, ...] = (1, 2, 4, 8, 16, 32)
    n_train: int = 6000
    n_test: int = 4000
    max_steps: int = 12_000
    jobs: int = 2


QUICK = Settings(
    datasets=("teacher-student",),
    seeds=1,
    multipliers=(1, 32),
    n_train=1000,
    n_test=500,
    max_steps=96,
    jobs=1,
)


@dataclasses.dataclass(frozen=True)
class Task:
    """One training run: a data set, a seed and a learning-rate multiplier."""

    dataset: str
    seed: int
    multiplier: float
    settings: Settings
    checkpoint_dir: Path


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    """Parse the command line into the experiment's settings and the raw
    arguments (``out``, ``checkpoints``, ``replot``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, multipliers 1 and 32, 1000 samples, at most 3 epochs",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results",
        help="folder for the tables and the figure (default: %(default)s)",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="rebuild the summary and the figure from OUT/runs.csv without training",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        help="keep the trained safetensors files in this folder (default: discard)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=DATASETS,
        help="data sets to train on (default: both, and digits needs scikit-learn)",
    )
    parser.add_argument("--seeds", type=int, help="number of seeds, 0 to N-1")
    parser.add_argument(
        "--multipliers", type=float, nargs="+", help="learning rates, in units of 0.01"
    )
    parser.add_argument("--n-train", type=int, help="teacher-student training samples")
    parser.add_argument("--n-test", type=int, help="teacher-student test samples")
    parser.add_argument("--max-steps", type=int, help="cap on SGD steps per run")
    parser.add_argument("--jobs", type=int, help="training processes run at once")
    args = parser.parse_args(argv)

    overrides = {
        name: getattr(args, name)
        for name in ("seeds", "n_train", "n_test", "max_steps", "jobs")
        if getattr(args, name) is not None
    }
    for name, value in overrides.items():
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, not {value}")
    if args.datasets:
        overrides["datasets"] = tuple(args.datasets)
    if args.multipliers:
        overrides["multipliers"] = tuple(args.multipliers)
    settings = dataclasses.replace(QUICK if args.quick else Settings(), **overrides)

    if "digits" in settings.datasets and importlib.util.find_spec("sklearn") is None:
        parser.error(
            "the digits data set needs scikit-learn, which is not installed: "
            "pip install scikit-learn, or pass --datasets teacher-student"
        )
    return settings, args


@functools.cache
def load_dataset(name: str, n_train: int, n_test: int) -> Dataset:
    """Build a data set once per process."""
    from mlp3_data import digits, teacher_student

    if name == "digits":
        return digits()
    return teacher_student(n_train, n_test)


def run_task(task: Task) -> list[dict[str, object]]:
    """Train one model, save it as safetensors and return its per-layer rows."""
    import torch
    from mlp3_training import BASE_LEARNING_RATE, train
    from safetensors.torch import save_file

    import pytest_setol

    torch.set_num_threads(1)
    settings = task.settings
    data = load_dataset(task.dataset, settings.n_train, settings.n_test)
    model, result = train(data, task.seed, task.multiplier, settings.max_steps)
    path = task.checkpoint_dir / (
        f"{task.dataset}_seed{task.seed}_lr{task.multiplier:g}x.safetensors"
    )
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(path))
    report = pytest_setol.analyze(path, device="cpu", randomize=True)
    run = {
        "dataset": task.dataset,
        "seed": task.seed,
        "multiplier": task.multiplier,
        "learning_rate": BASE_LEARNING_RATE * task.multiplier,
        "epochs": result.epochs,
        "stopped_by": result.stopped_by,
        "train_loss": round(result.train_loss, 6),
        "train_error": round(result.train_error, 5),
        "test_error": round(result.test_error, 5),
        "train_seconds": round(result.seconds, 2),
    }
    rows = []
    for layer in report.layers:
        row = dict(run, layer=layer.name, status=layer.status, reason=layer.reason)
        for key in (
            "alpha", "D", "num_pl_spikes", "erg_delta", "erg_gap", "erg_num",
            "num_spikes", "rand_num_spikes", "rand_lambda_max", "rand_jsd",
        ):  # fmt: skip
            row[key] = getattr(layer, key)
        rows.append(row)
    return rows


def run_all(settings: Settings, checkpoint_dir: Path) -> list[dict[str, object]]:
    tasks = [
        Task(dataset, seed, multiplier, settings, checkpoint_dir)
        for dataset in settings.datasets
        for seed in range(settings.seeds)
        for multiplier in settings.multipliers
    ]
    rows: list[dict[str, object]] = []
    if settings.jobs <= 1:
        results = map(run_task, tasks)
        for task, task_rows in zip(tasks, results, strict=True):
            _progress(task, task_rows)
            rows.extend(task_rows)
        return rows
    # Spawned rather than forked workers start a clean interpreter each, so
    # none inherits torch's thread-pool state from the parent.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        settings.jobs, mp_context=context
    ) as pool:
        for task, task_rows in zip(tasks, pool.map(run_task, tasks), strict=True):
            _progress(task, task_rows)
            rows.extend(task_rows)
    return rows


def _progress(task: Task, rows: list[dict[str, object]]) -> None:
    first = rows[0]
    alphas = " ".join(
        f"{r['layer']}={r['alpha']:.2f}" for r in rows if r["alpha"] is not None
    )
    print(
        f"{task.dataset} seed {task.seed} x{task.multiplier:g}: "
        f"{first['epochs']} epochs ({first['stopped_by']}), "
        f"test error {first['test_error']:.3f}, alpha {alphas}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    from mlp3_report import (
        markdown_table,
        read_runs,
        summarize,
        write_figure,
        write_runs,
        write_summary_csv,
    )

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.replot:
        rows = read_runs(out / "runs.csv")
    elif args.checkpoints is not None:
        args.checkpoints.mkdir(parents=True, exist_ok=True)
        rows = run_all(settings, args.checkpoints)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            rows = run_all(settings, Path(scratch))
    summary = summarize(rows)
    written = ["summary.csv", "summary.md", "mlp3.png"]
    if not args.replot:
        write_runs(rows, out / "runs.csv")
        written.insert(0, "runs.csv")
    write_summary_csv(summary, out / "summary.csv")
    (out / "summary.md").write_text(markdown_table(summary))
    write_figure(summary, out / "mlp3.png")
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {', '.join(written)} in {out} after {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
