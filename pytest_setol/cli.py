"""The ``setol`` command: ``report``, ``check``, ``init`` and ``header``.

Exit codes, highest wins: 2 for a usage error or an unreadable checkpoint,
1 for a fail verdict, 0 otherwise (warn verdicts are printed and exit 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .options import SCALES, XMIN_STRATEGIES

if TYPE_CHECKING:
    from .config import Config
    from .options import AnalysisOptions
    from .plots import CheckpointFigures
    from .progress import LayerProgress
    from .results import Report

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

#: Output formats; the same list as ``formats.FORMATS``, kept here so that
#: ``--help`` imports nothing heavy.
_FORMATS = ("table", "json", "markdown", "html")
_DEFAULT_COLUMNS = "shape,alpha,alpha_hat,erg_delta"
#: Width of table output when standard output is not a terminal.
_PLAIN_WIDTH = 132

_EPILOG = (
    "exit status: 0 when every rule passes or only warns, 1 when a fail-severity "
    "rule is violated, 2 for a usage error or an unreadable checkpoint"
)


class UsageError(Exception):
    """A command-line value is invalid; the message names the option."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``setol`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="setol",
        description="Lint neural-network checkpoints from their weights alone: "
        "HTSR power-law alpha and SETOL's ERG condition per weight matrix.",
        epilog=_EPILOG,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_report(commands)
    _add_check(commands)
    _add_init(commands)
    _add_header(commands)
    return parser


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary, epilog=_EPILOG)


def _add_report(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = _subcommand(
        commands,
        "report",
        "Print the layer report of each checkpoint: a table of every weight "
        "matrix and a model summary.",
    )
    _add_paths(command)
    add_analysis_options(command)
    _add_output_options(command)
    command.add_argument(
        "--plot",
        metavar="DIR",
        help="also write PNG figures under DIR, one folder per checkpoint: an ESD "
        "figure per layer and an alpha overview; needs the plot extra, "
        "pip install pytest-setol[plot] (default: no figures)",
    )


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = _subcommand(
        commands,
        "check",
        "Apply the YAML thresholds and print only the violations and a one-line "
        "summary; the entry point of the setol-check pre-commit hook.",
    )
    _add_paths(command)
    add_analysis_options(command)
    _add_output_options(command)


def _add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = _subcommand(
        commands,
        "init",
        "Write a starter setol.yaml for a checkpoint: the defaults, commented, "
        "and the layers that fail them today.",
    )
    command.add_argument(
        "path", metavar="PATH", help="checkpoint file to analyse with the defaults"
    )
    command.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="file to write (default: setol.yaml beside the checkpoint, where "
        "setol check and pytest --setol find it)",
    )
    command.add_argument(
        "--force",
        action="store_true",
        help="overwrite FILE when it exists (default: off, an existing file is "
        "an error)",
    )
    command.add_argument(
        "--no-baseline",
        action="store_true",
        help="list the failing layers only as comments, so setol check fails until "
        "they are fixed (default: off, write entries that lower their failing "
        "rules to warnings so the gate passes today)",
    )
    _add_device(command)
    _add_progress(command)


def _add_header(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = _subcommand(
        commands,
        "header",
        "Validate checkpoint headers, dtypes and shapes without computing spectra; "
        "the entry point of the setol-header pre-commit hook.",
    )
    _add_paths(command)
    _add_config(command)


def _add_paths(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="checkpoint files; a shard is skipped when its index file is also given",
    )


def _add_config(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config",
        metavar="FILE",
        help="YAML thresholds file (default: setol.yaml beside each checkpoint, "
        "else the built-in defaults: alpha in [2, 6] fails, erg_delta >= 0 warns)",
    )


def _add_device(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="where eigenvalues are computed: auto, cpu or cuda[:N] (default: auto, "
        "which uses CUDA when an NVIDIA driver and torch are present, else cpu)",
    )


def _add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--no-progress",
        action="store_true",
        help="never draw the progress bar (default: drawn on standard error while "
        "layers are computed, when it is a terminal and CI is unset)",
    )


def add_analysis_options(command: argparse.ArgumentParser) -> None:
    """Add the options that change what is computed, shared by report and check."""
    _add_config(command)
    _add_device(command)
    _add_progress(command)
    command.add_argument(
        "--base",
        metavar="PATH",
        help="checkpoint the others were fine-tuned from: also report W - W_base "
        "of each matching matrix as NAME[delta]; with a LoRA adapter folder, "
        "analyse the merged weights (default: none)",
    )
    _add_metric_options(command)
    _add_scale_out_options(command)


def _add_scale_out_options(command: argparse.ArgumentParser) -> None:
    """Add the spectra cache and Dask scheduler options."""
    command.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep computed spectra under DIR and reuse them while the tensor and "
        "every setting that changes its eigenvalues are unchanged (default: "
        "$SETOL_CACHE_DIR, else $XDG_CACHE_HOME/pytest-setol, else "
        "~/.cache/pytest-setol)",
    )
    command.add_argument(
        "--no-cache",
        action="store_true",
        help="compute every spectrum, reading and writing no cache (default: off)",
    )
    command.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a Dask scheduler, such as tcp://10.0.0.5:8786, whose "
        "workers compute the layers; every worker must see the checkpoints at "
        "the same paths; needs pip install pytest-setol[dask] (default: compute "
        "in this process)",
    )


def _add_metric_options(command: argparse.ArgumentParser) -> None:
    """Add the estimator and opt-in metric options."""
    command.add_argument(
        "--xmin-strategy",
        choices=XMIN_STRATEGIES,
        default="ks",
        help="how the power-law fit chooses xmin: ks (smallest Kolmogorov-Smirnov "
        "distance), median, peak (near the mode of the log histogram) or clip "
        "(ks without up to 10 outlying eigenvalues) (default: ks)",
    )
    command.add_argument(
        "--scale",
        choices=SCALES,
        default="raw",
        help="scale of eigenvalue-valued outputs (xmin, xmax, lambda_max, the log "
        "norms, alpha_hat, rand_traps, rand_lambda_max): raw squared singular "
        "values, or divided by N as in the HTSR papers (default: raw)",
    )
    command.add_argument(
        "--randomize",
        action="store_true",
        help="also shuffle each matrix and report rand_num_spikes, rand_traps, "
        "rand_lambda_max and rand_jsd; doubles the eigenvalue work (default: off)",
    )
    command.add_argument(
        "--seed",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="seed of the --randomize shuffle; the same seed gives the same "
        "numbers in every process (default: 0)",
    )
    command.add_argument(
        "--alpha-farms",
        action="store_true",
        help="also report alpha_farms, an alpha of 100 x 200 submatrices that "
        "compares across layer shapes; about 100 extra small solves per matrix "
        "(default: off)",
    )


def _add_output_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--format",
        choices=_FORMATS,
        default="table",
        help="output format: table (text), json (the report document, "
        "schema_version 1), markdown (GitHub-flavoured, fits "
        "$GITHUB_STEP_SUMMARY) or html (one self-contained file with embedded "
        "figures) (default: table)",
    )
    command.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the output to FILE (default: standard output)",
    )
    command.add_argument(
        "--columns",
        metavar="KEYS",
        default=_DEFAULT_COLUMNS,
        help="comma-separated layer keys shown between the layer name and its "
        "status in table, markdown and html output; any key of the JSON layer "
        f"entries (default: {_DEFAULT_COLUMNS})",
    )
    command.add_argument(
        "--width",
        type=_positive_int,
        metavar="CHARS",
        help="width of table output in characters (default: the terminal's width, "
        f"{_PLAIN_WIDTH} when the output is not a terminal)",
    )


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 0 or more, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer of 0 or more, got {value}"
        )
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``setol`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    from .errors import SetolError

    handlers = {
        "report": _run_report,
        "check": _run_report,
        "init": _run_init,
        "header": _run_header,
    }
    try:
        return handlers[args.command](args)
    except (UsageError, SetolError) as exc:
        print(f"setol {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# report and check -------------------------------------------------------------


def _run_report(args: argparse.Namespace) -> int:
    from .progress import LayerProgress, should_show_progress

    columns = _columns(args.columns)
    plot_dir = getattr(args, "plot", None)
    if plot_dir:
        _require_plotting("--plot")
    paths = drop_indexed_shards(args.paths)
    with LayerProgress(not args.no_progress and should_show_progress()) as progress:
        report, exit_code = analyse_paths(args, paths, progress)
        figures, note = None, None
        if plot_dir or args.format == "html":
            figures, note = _figures(report, progress, _cache_dir(args))
    if plot_dir and figures is not None:
        from .plots import write_figures

        written = write_figures(figures, Path(plot_dir))
        print(f"setol: wrote {len(written)} figures under {plot_dir}", file=sys.stderr)
    if note and args.format == "html":
        print(f"setol: {note}", file=sys.stderr)
    _emit(report, args, columns, figures, note)
    return exit_code


def analyse_paths(
    args: argparse.Namespace, paths: Sequence[str], progress: LayerProgress
) -> tuple[Report, int]:
    """Analyse each checkpoint; return the report and the exit code it implies.

    An unreadable checkpoint is recorded in the report and makes the code 2;
    an invalid configuration raises, since no result could be trusted.
    """
    from .analysis import CheckpointAnalysis, error_result, report_settings
    from .distributed import analyze_on_cluster, cluster_client
    from .errors import CheckpointError
    from .results import Report

    options = analysis_options(args)
    shared = _load_config(args.config) if args.config else None
    checkpoints = []
    unreadable = False
    with cluster_client(args.scheduler) as client:
        for path in paths:
            config = shared if shared is not None else _config_beside(path)
            analysis = CheckpointAnalysis(
                path, config, options, progress.advance_layer, base=args.base
            )
            try:
                names = analysis.layer_names()
                config.check_patterns(names)
                progress.start(Path(path).name, len(names))
                if client is not None:
                    analyze_on_cluster(analysis, client, args.base)
                checkpoints.append(analysis.result())
            except CheckpointError as exc:
                checkpoints.append(error_result(path, exc, config))
                unreadable = True
    report = Report(report_settings(args.device, options), tuple(checkpoints))
    if unreadable:
        return report, EXIT_USAGE
    return report, EXIT_FAIL if report.failed else EXIT_OK


def analysis_options(args: argparse.Namespace) -> AnalysisOptions:
    """Build the analysis options from the parsed command line."""
    from .gpu import resolve_device
    from .options import AnalysisOptions

    return AnalysisOptions(
        device=resolve_device(args.device),
        xmin_strategy=getattr(args, "xmin_strategy", "ks"),
        scale=getattr(args, "scale", "raw"),
        randomize=getattr(args, "randomize", False),
        seed=getattr(args, "seed", 0),
        alpha_farms=getattr(args, "alpha_farms", False),
        cache_dir=_cache_dir(args),
    )


def _cache_dir(args: argparse.Namespace) -> str | None:
    """Return the spectra cache directory the command line selects, or None."""
    if getattr(args, "no_cache", False):
        return None
    from .cache import default_cache_dir

    return str(getattr(args, "cache_dir", None) or default_cache_dir())


def _load_config(path: str) -> Config:
    from .config import load_config

    return load_config(path)


def _config_beside(checkpoint: str) -> Config:
    from .analysis import find_config
    from .config import Config

    found = find_config(checkpoint)
    return _load_config(str(found)) if found else Config()


def drop_indexed_shards(paths: Sequence[str]) -> list[str]:
    """Drop the shards that a ``*.safetensors.index.json`` among ``paths`` lists.

    pre-commit passes an index and its changed shards together; the index
    covers them, and analysing both would report each layer twice. An index
    that cannot be parsed is kept as given, for the reader to report.
    """
    covered: set[Path] = set()
    for path in paths:
        if not path.endswith(".index.json"):
            continue
        try:
            weight_map = json.loads(Path(path).read_text(encoding="utf-8"))[
                "weight_map"
            ]
            shards = {str(shard) for shard in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        folder = Path(path).parent
        covered.update((folder / shard).resolve() for shard in shards)
    return [
        p
        for p in paths
        if p.endswith(".index.json") or Path(p).resolve() not in covered
    ]


def _columns(text: str) -> tuple[str, ...]:
    from .results import LayerResult

    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    known = set(LayerResult.__dataclass_fields__)
    unknown = [c for c in columns if c not in known or c in ("name", "status")]
    if unknown:
        raise UsageError(
            f"--columns: unknown layer key {unknown[0]!r}; use keys of the JSON "
            "layer entries other than name and status, such as alpha, D, erg_delta"
        )
    return columns


def _require_plotting(option: str) -> None:
    from .plots import PLOT_INSTALL_HINT, plotting_available

    if not plotting_available():
        raise UsageError(
            f"{option} needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}"
        )


def _figures(
    report: Report, progress: LayerProgress, cache_dir: str | None
) -> tuple[tuple[CheckpointFigures, ...] | None, str | None]:
    """Draw the figures, or return why there are none."""
    from .plots import (
        PLOT_INSTALL_HINT,
        figure_count,
        plotting_available,
        render_figures,
    )

    if not plotting_available():
        return (
            None,
            "HTML report written without figures: they need matplotlib, "
            + PLOT_INSTALL_HINT,
        )
    progress.start("figures", figure_count(report))
    return render_figures(report, progress.advance, cache_dir), None


def _emit(
    report: Report,
    args: argparse.Namespace,
    columns: tuple[str, ...],
    figures: tuple[CheckpointFigures, ...] | None,
    note: str | None,
) -> None:
    from .formats import render, render_violations

    to_terminal = args.output is None and sys.stdout.isatty()
    if args.command == "check" and args.format == "table":
        text = render_violations(report, color=to_terminal)
    else:
        width = args.width or (
            shutil.get_terminal_size().columns if to_terminal else _PLAIN_WIDTH
        )
        text = render(
            report,
            args.format,
            columns=columns,
            width=width,
            color=to_terminal and args.format == "table",
            figures=figures,
            figures_note=note,
        )
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


# init -------------------------------------------------------------------------


def _run_init(args: argparse.Namespace) -> int:
    from .analysis import CheckpointAnalysis
    from .config import Config
    from .progress import LayerProgress, should_show_progress
    from .starter import starter_config

    checkpoint = Path(args.path)
    target = Path(args.output) if args.output else _default_config_path(checkpoint)
    if target.exists() and not args.force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    options = analysis_options(args)
    with LayerProgress(not args.no_progress and should_show_progress()) as progress:
        analysis = CheckpointAnalysis(
            checkpoint, Config(), options, progress.advance_layer
        )
        progress.start(checkpoint.name, len(analysis.layer_names()))
        result = analysis.result()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(starter_config(result, baseline=not args.no_baseline), "utf-8")
    failing = sum(1 for layer in result.layers if layer.failed)
    print(
        f"setol init: wrote {target}: {len(result.layers)} matrices, "
        f"{failing} failing the defaults"
        + (" (accepted as warnings)" if failing and not args.no_baseline else "")
    )
    return EXIT_OK


def _default_config_path(checkpoint: Path) -> Path:
    from .analysis import CONFIG_NAME

    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return folder / CONFIG_NAME


# header -----------------------------------------------------------------------


def _run_header(args: argparse.Namespace) -> int:
    """Read each header and plan its layers; computes no spectra."""
    from .errors import CheckpointError
    from .planner import plan_layers
    from .reader import open_checkpoint

    shared = _load_config(args.config) if args.config else None
    paths = drop_indexed_shards(args.paths)
    unreadable = 0
    matrices = 0
    for path in paths:
        config = shared if shared is not None else _config_beside(path)
        try:
            plan = plan_layers(open_checkpoint(path), config)
        except CheckpointError as exc:
            print(f"error {exc}")
            unreadable += 1
            continue
        names = [layer.name for layer in plan.layers]
        if names:
            config.check_patterns(names)
        matrices += len(names)
    files = f"{len(paths)} checkpoint{'s' if len(paths) != 1 else ''}"
    if unreadable:
        print(f"setol header: failed: {files}: {unreadable} unreadable")
        return EXIT_USAGE
    noun = "matrix" if matrices == 1 else "matrices"
    print(f"setol header: passed: {files}, {matrices} {noun}, headers valid")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
