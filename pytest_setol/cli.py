"""The ``setol`` command: ``setol report`` and ``setol check``.

Exit codes, highest wins: 2 for a usage error or an unreadable checkpoint,
1 for a fail verdict, 0 otherwise (warn verdicts are printed and exit 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="setol",
        description="Lint neural-network checkpoints from their weights alone.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in (
        ("report", "print the layer report of each checkpoint"),
        ("check", "apply the YAML thresholds; print only violations"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint files")
        command.add_argument(
            "--config",
            metavar="FILE",
            help="YAML thresholds (default: setol.yaml beside each checkpoint, "
            "else the built-in defaults)",
        )
        command.add_argument(
            "--device",
            default="auto",
            help="auto, cpu or cuda[:N] (default: auto)",
        )
        command.add_argument(
            "--format",
            choices=("table", "json"),
            default="table",
            help="output format (default: table)",
        )
        command.add_argument(
            "--output", metavar="FILE", help="write the output to FILE instead of stdout"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .analysis import CheckpointAnalysis, report_settings, resolve_config
    from .analysis import error_result
    from .errors import CheckpointError, SetolError
    from .gpu import resolve_device
    from .options import AnalysisOptions
    from .report import render_terminal
    from .results import Report

    try:
        options = AnalysisOptions(device=resolve_device(args.device))
    except SetolError as exc:
        print(f"setol: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    checkpoints = []
    exit_code = EXIT_OK
    for path in args.paths:
        try:
            config = resolve_config(args.config, path)
            analysis = CheckpointAnalysis(path, config, options)
            config.check_patterns(analysis.layer_names())
            checkpoints.append(analysis.result())
        except CheckpointError as exc:
            checkpoints.append(error_result(path, exc, None))
            exit_code = EXIT_USAGE
        except SetolError as exc:
            print(f"setol: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    report = Report(report_settings(args.device, options), tuple(checkpoints))
    if exit_code == EXIT_OK and report.failed:
        exit_code = EXIT_FAIL
    if args.format == "json":
        text = json.dumps(report.to_dict(), indent=2) + "\n"
    else:
        text = render_terminal(report, width=120, color=args.output is None and sys.stdout.isatty())
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
