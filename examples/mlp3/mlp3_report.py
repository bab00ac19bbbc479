"""Tables and figure of the MLP3 experiment: CSV, Markdown and PNG."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]

#: Columns of ``runs.csv``: one row per run and weight matrix.
RUN_COLUMNS = (
    "dataset",
    "seed",
    "multiplier",
    "learning_rate",
    "epochs",
    "stopped_by",
    "train_loss",
    "train_error",
    "test_error",
    "train_seconds",
    "layer",
    "status",
    "reason",
    "alpha",
    "D",
    "num_pl_spikes",
    "erg_delta",
    "erg_gap",
    "erg_num",
    "num_spikes",
    "rand_num_spikes",
    "rand_lambda_max",
    "rand_jsd",
)

#: Layers summarised. ``fc3`` (10 x 100) is below ``min_eigenvalues`` and skipped.
SUMMARY_LAYERS = ("fc1", "fc2")
LAYER_METRICS = ("alpha", "erg_delta", "erg_gap", "rand_num_spikes")
RUN_METRICS = ("epochs", "train_error", "test_error")


def write_runs(rows: Sequence[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RUN_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in RUN_COLUMNS})


def read_runs(path: Path) -> list[Row]:
    """Read ``runs.csv`` back, numbers as floats and empty cells as None."""
    with path.open(newline="") as handle:
        return [
            {key: _parse(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _parse(value: str) -> Any:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def summarize(rows: Sequence[Row]) -> list[Row]:
    """Return one row per data set and multiplier: mean and standard deviation
    over seeds of each error and layer metric, and how many runs hit the
    epoch cap or diverged. Data sets keep the order of ``rows``.
    """
    groups: dict[tuple[str, float], list[Row]] = {}
    for row in rows:
        key = (str(row["dataset"]), float(row["multiplier"]))
        groups.setdefault(key, []).append(row)
    datasets = list(dict.fromkeys(dataset for dataset, _ in groups))
    summary = []
    for dataset, multiplier in sorted(
        groups, key=lambda key: (datasets.index(key[0]), key[1])
    ):
        group = groups[dataset, multiplier]
        runs = list({r["seed"]: r for r in group}.values())
        entry: Row = {"dataset": dataset, "multiplier": multiplier, "runs": len(runs)}
        entry["capped"] = sum(r["stopped_by"] == "epoch cap" for r in runs)
        entry["diverged"] = sum(r["stopped_by"] == "diverged" for r in runs)
        for metric in RUN_METRICS:
            _add_spread(entry, metric, [r[metric] for r in runs])
        for layer in SUMMARY_LAYERS:
            layer_rows = [r for r in group if r["layer"] == f"{layer}.weight"]
            for metric in LAYER_METRICS:
                values = [r[metric] for r in layer_rows]
                _add_spread(entry, f"{layer}_{metric}", values)
            traps = [r["rand_num_spikes"] for r in layer_rows]
            known = [t for t in traps if t is not None]
            entry[f"{layer}_runs_with_traps"] = (
                sum(t > 0 for t in known) if known else None
            )
        summary.append(entry)
    return summary


def _add_spread(entry: Row, key: str, values: Iterable[Any]) -> None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    entry[f"{key}_mean"] = statistics.fmean(finite) if finite else None
    entry[f"{key}_std"] = statistics.stdev(finite) if len(finite) > 1 else None


def write_summary_csv(summary: Sequence[Row], path: Path) -> None:
    columns = list(summary[0]) if summary else []
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in summary:
            writer.writerow({key: _cell(row.get(key)) for key in columns})


def _spread(entry: Row, key: str, digits: int) -> str:
    mean, std = entry.get(f"{key}_mean"), entry.get(f"{key}_std")
    if mean is None:
        return "n/a"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: Sequence[Row]) -> str:
    """Render the summary as a Markdown table, mean ± standard deviation over seeds."""
    header = (
        "| data set | LR x | runs | epochs | capped | train error | test error "
        "| fc1 alpha | fc1 erg_delta | fc1 traps | fc2 alpha | fc2 erg_delta "
        "| fc2 traps |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for entry in summary:
        cells = [
            str(entry["dataset"]),
            f"{entry['multiplier']:g}",
            str(entry["runs"]),
            _spread(entry, "epochs", 0),
            str(entry["capped"]),
            _spread(entry, "train_error", 3),
            _spread(entry, "test_error", 3),
            _spread(entry, "fc1_alpha", 2),
            _spread(entry, "fc1_erg_delta", 2),
            _traps(entry, "fc1"),
            _spread(entry, "fc2_alpha", 2),
            _spread(entry, "fc2_erg_delta", 2),
            _traps(entry, "fc2"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _traps(entry: Row, layer: str) -> str:
    """Runs whose randomized ESD has at least one trap, out of all runs."""
    count = entry.get(f"{layer}_runs_with_traps")
    return "n/a" if count is None else f"{count}/{entry['runs']}"


def write_figure(summary: Sequence[Row], path: Path) -> None:
    """Plot alpha, erg_delta, traps and the errors against the multiplier.

    One row of panels per data set. Points are means over seeds, and error
    bars are one standard deviation.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    datasets = list(dict.fromkeys(str(e["dataset"]) for e in summary))
    figure, axes = plt.subplots(
        len(datasets), 4, figsize=(14, 3.1 * len(datasets)), squeeze=False
    )
    for row_axes, dataset in zip(axes, datasets, strict=True):
        entries = [e for e in summary if e["dataset"] == dataset]
        x = [e["multiplier"] for e in entries]
        panels = (
            (row_axes[0], ("fc1_alpha", "fc2_alpha"), "alpha", 2.0),
            (row_axes[1], ("fc1_erg_delta", "fc2_erg_delta"), "erg_delta", 0.0),
            (
                row_axes[2],
                ("fc1_rand_num_spikes", "fc2_rand_num_spikes"),
                "rand_num_spikes",
                None,
            ),
            (row_axes[3], ("train_error", "test_error"), "error", None),
        )
        for axis, keys, label, reference in panels:
            for key in keys:
                mean = [_nan(e.get(f"{key}_mean")) for e in entries]
                std = [_nan(e.get(f"{key}_std"), 0.0) for e in entries]
                axis.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=key)
            if reference is not None:
                axis.axhline(reference, color="grey", linewidth=0.8, linestyle="--")
            axis.set_xscale("log", base=2)
            axis.set_xticks(x, [f"{v:g}" for v in x])
            axis.set_xlabel("learning rate / 0.01")
            axis.set_ylabel(label)
            axis.set_title(f"{dataset}: {label}", fontsize=10)
            axis.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    plt.close(figure)
    # A 64-colour palette shrinks the committed figure from 97 kB to 27 kB.
    from PIL import Image

    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)


def _nan(value: Any, default: float = math.nan) -> float:
    return default if value is None else float(value)
