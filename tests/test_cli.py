"""The ``setol`` command on generated checkpoints: subcommands, exit codes, help."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_setol.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, build_parser, main
from pytest_setol.config import load_config
from pytest_setol.starter import escape_glob
from tests.checkpoint_builders import (
    bulk_and_tail,
    matrices,
    mixed_tensors,
    pareto,
    write,
)

#: Seconds a subprocess of the command may take on a generated checkpoint.
SUBPROCESS_TIMEOUT = 120


@pytest.fixture(autouse=True)
def spectra_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep the command line's spectra cache out of the home directory."""
    monkeypatch.setenv("SETOL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def good_tensors() -> dict[str, np.ndarray]:
    tensors = matrices(block__0__q=bulk_and_tail(), block__1__q=bulk_and_tail())
    tensors["block.0.bias"] = np.zeros(200, dtype=np.float32)
    return tensors


@pytest.fixture(scope="module")
def mixed_data() -> dict[str, np.ndarray]:
    return mixed_tensors()


@pytest.fixture
def good(tmp_path: Path, good_tensors) -> Path:
    return write(tmp_path / "good" / "model.safetensors", good_tensors)


@pytest.fixture
def mixed(tmp_path: Path, mixed_data) -> Path:
    return write(tmp_path / "mixed" / "model.safetensors", mixed_data)


@pytest.fixture
def warned(tmp_path: Path) -> Path:
    """Only an ``erg_delta`` warning: alpha 2.5 is inside [2, 6]."""
    return write(tmp_path / "warned" / "model.safetensors", matrices(w=pareto(2.5)))


@pytest.fixture
def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# report ---------------------------------------------------------------------


def test_report_table(capsys, good):
    code, out, _ = run(capsys, "report", good)
    assert code == EXIT_OK
    assert "block.0.q" in out
    assert "block.1.q" in out
    assert "model summary" in out
    assert "2 of 2 matrices analysed" in out
    assert "not analysed: 1 1-D tensor (bias or norm)" in out


def test_report_layers_natural_order(capsys, tmp_path):
    spectra = {f"layers__{i}__w": bulk_and_tail() for i in (10, 2, 1)}
    path = write(tmp_path / "order.safetensors", matrices(**spectra))
    _, out, _ = run(capsys, "report", path)
    positions = [out.index(f"layers.{i}.w ") for i in (1, 2, 10)]
    assert positions == sorted(positions)


def test_report_fail_verdict_exits_1(capsys, mixed):
    code, out, _ = run(capsys, "report", mixed)
    assert code == EXIT_FAIL
    assert "over-trained" in out
    assert "under-trained" in out


def test_report_json_output_file(capsys, mixed, tmp_path):
    target = tmp_path / "out" / "report.json"
    code, out, _ = run(capsys, "report", mixed, "--format", "json", "--output", target)
    assert code == EXIT_FAIL
    assert out == ""
    document = json.loads(target.read_text())
    assert document["schema_version"] == 1
    names = [layer["name"] for layer in document["checkpoints"][0]["layers"]]
    assert names == ["ok", "over", "tiny", "under", "warned"]


def test_report_columns_option(capsys, good):
    code, out, _ = run(capsys, "report", good, "--columns", "D,num_pl_spikes")
    assert code == EXIT_OK
    assert "num_pl_spikes" in out
    assert "alpha_hat" not in out


def test_report_unknown_column(capsys, good):
    code, _, err = run(capsys, "report", good, "--columns", "alpha,bogus")
    assert code == EXIT_USAGE
    assert "--columns: unknown layer key 'bogus'" in err


def test_report_width_option(capsys, good):
    _, out, _ = run(capsys, "report", good, "--width", "90")
    assert max(len(line) for line in out.splitlines()) <= 90


# check ----------------------------------------------------------------------


def test_check_clean_prints_one_line(capsys, good):
    code, out, _ = run(capsys, "check", good)
    assert code == EXIT_OK
    assert out.splitlines() == [
        "setol check: passed: 1 checkpoint, 2 matrices, no violations"
    ]


def test_check_lists_only_violations(capsys, mixed):
    code, out, _ = run(capsys, "check", mixed)
    lines = out.splitlines()
    assert code == EXIT_FAIL
    assert (
        lines[-1]
        == "setol check: failed: 1 checkpoint, 5 matrices: 2 fail, 3 warn, 0 unreadable"
    )
    body = "\n".join(lines[:-1])
    assert f"fail  {mixed}::over: alpha = " in body
    assert f"fail  {mixed}::under: alpha = " in body
    assert f"warn  {mixed}::warned: erg_delta = " in body
    assert "::ok:" not in body
    assert "::tiny:" not in body


def test_check_warnings_exit_0(capsys, warned):
    code, out, _ = run(capsys, "check", warned)
    assert code == EXIT_OK
    assert "warn " in out
    assert out.splitlines()[-1].startswith("setol check: passed with warnings:")


def test_check_unreadable_exits_2(capsys, good, empty_file):
    code, out, _ = run(capsys, "check", good, empty_file)
    assert code == EXIT_USAGE
    assert f"error {empty_file}: file is empty\n" in out
    assert out.splitlines()[-1].endswith("0 fail, 0 warn, 1 unreadable")


def test_check_unreadable_wins_over_fail(capsys, mixed, empty_file):
    code, _, _ = run(capsys, "check", mixed, empty_file)
    assert code == EXIT_USAGE


def test_check_lfs_pointer_reported(capsys, tmp_path):
    pointer = tmp_path / "model.safetensors"
    pointer.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n"
    )
    code, out, _ = run(capsys, "check", pointer)
    assert code == EXIT_USAGE
    assert "Git LFS pointer" in out
    assert "git lfs pull" in out


def test_check_nan_layer_fails(capsys, tmp_path):
    tensors = matrices(w=bulk_and_tail())
    tensors["w"][3, 7] = np.nan
    path = write(tmp_path / "nan.safetensors", tensors)
    code, out, _ = run(capsys, "check", path)
    assert code == EXIT_FAIL
    assert f"fail  {path}::w: invalid: 1 NaN or Inf entries" in out


def test_check_config_option(capsys, mixed, tmp_path):
    config = tmp_path / "loose.yaml"
    config.write_text("rules:\n  alpha: {min: 1.0, max: 8.0}\n  erg_delta: null\n")
    code, out, _ = run(capsys, "check", mixed, "--config", config)
    assert code == EXIT_OK
    assert out.splitlines() == [
        "setol check: passed: 1 checkpoint, 5 matrices, no violations"
    ]


def test_check_invalid_config_exits_2(capsys, good, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("rules:\n  alpha: {min: two}\n")
    code, _, err = run(capsys, "check", good, "--config", config)
    assert code == EXIT_USAGE
    assert f"{config}:2: rules.alpha.min: expected a number" in err


def test_check_markdown_format(capsys, mixed):
    code, out, _ = run(capsys, "check", mixed, "--format", "markdown")
    assert code == EXIT_FAIL
    assert out.startswith("## setol report\n")
    assert "| **fail** | `over` | alpha |" in out


def test_usage_error_exits_2(capsys, good):
    with pytest.raises(SystemExit) as excinfo:
        main(["report", str(good), "--format", "pdf"])
    assert excinfo.value.code == EXIT_USAGE
    assert "invalid choice: 'pdf'" in capsys.readouterr().err


def test_missing_file_exits_2(capsys, tmp_path):
    missing = tmp_path / "missing.safetensors"
    code, out, _ = run(capsys, "check", missing)
    assert code == EXIT_USAGE
    assert "file not found" in out


# init -----------------------------------------------------------------------


def test_init_baseline_passes_check(capsys, mixed):
    code, out, _ = run(capsys, "init", mixed)
    target = mixed.parent / "setol.yaml"
    assert code == EXIT_OK
    assert out == (
        f"setol init: wrote {target}: 5 matrices, 2 failing the defaults "
        "(accepted as warnings)\n"
    )
    text = target.read_text()
    assert "alpha: {min: 2.0, max: 6.0, severity: fail}" in text
    assert "erg_delta: {min: 0.0, severity: warn}" in text
    assert "#   over: alpha = " in text
    assert "#   under: alpha = " in text
    assert "#   warned: erg_delta = " in text
    config = load_config(target)
    assert [o.patterns for o in config.layers] == [("over",), ("under",)]
    assert config.rules_for("over")[0].severity == "warn"
    code, out, _ = run(capsys, "check", mixed)
    assert code == EXIT_OK
    assert out.splitlines()[-1].startswith("setol check: passed with warnings:")


def test_init_no_baseline_keeps_gate(capsys, mixed):
    code, _, _ = run(capsys, "init", mixed, "--no-baseline")
    assert code == EXIT_OK
    config = load_config(mixed.parent / "setol.yaml")
    assert config.layers == ()
    code, _, _ = run(capsys, "check", mixed)
    assert code == EXIT_FAIL


def test_init_clean_checkpoint(capsys, good):
    code, _, _ = run(capsys, "init", good)
    text = (good.parent / "setol.yaml").read_text()
    assert code == EXIT_OK
    assert "# All 2 matrices pass these rules today." in text
    assert "layers:" not in text


def test_init_refuses_overwrite(capsys, good):
    existing = good.parent / "setol.yaml"
    existing.write_text("min_eigenvalues: 10\n")
    code, _, err = run(capsys, "init", good)
    assert code == EXIT_USAGE
    assert f"{existing} already exists; pass --force to overwrite it" in err
    assert existing.read_text() == "min_eigenvalues: 10\n"
    code, _, _ = run(capsys, "init", good, "--force")
    assert code == EXIT_OK
    assert "min_eigenvalues: 50" in existing.read_text()


def test_init_invalid_layer_skipped(capsys, tmp_path):
    tensors = matrices(w=bulk_and_tail(), v=bulk_and_tail())
    tensors["v"][0, 0] = np.inf
    path = write(tmp_path / "inf.safetensors", tensors)
    target = tmp_path / "conf" / "thresholds.yaml"
    code, _, _ = run(capsys, "init", path, "--output", target)
    assert code == EXIT_OK
    config = load_config(target)
    assert (
        config.skip_reason("v")
        == "accepted by setol init: invalid: 1 NaN or Inf entries"
    )
    code, _, _ = run(capsys, "check", path, "--config", target)
    assert code == EXIT_OK


def test_init_globs_match_exact_names():
    names = ["experts[3]", "a*b", "what?", "plain.weight"]
    import fnmatch

    for name in names:
        pattern = escape_glob(name)
        others = [n for n in names + ["experts3", "aXb", "whatX"] if n != name]
        assert fnmatch.fnmatchcase(name, pattern)
        assert not any(fnmatch.fnmatchcase(other, pattern) for other in others)


# header ---------------------------------------------------------------------


def test_header_valid(capsys, good, mixed):
    code, out, _ = run(capsys, "header", good, mixed)
    assert code == EXIT_OK
    assert out == "setol header: passed: 2 checkpoints, 7 matrices, headers valid\n"


def test_header_computes_no_spectra(capsys, tmp_path):
    # NaN entries make the layer invalid once its data is read; the header
    # check reads no tensor data, so it passes.
    tensors = matrices(w=bulk_and_tail())
    tensors["w"][:] = np.nan
    path = write(tmp_path / "nan.safetensors", tensors)
    code, _, _ = run(capsys, "header", path)
    assert code == EXIT_OK


def test_header_truncated_file(capsys, good, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    code, out, _ = run(capsys, "header", good, truncated)
    assert code == EXIT_USAGE
    assert f"error {truncated}: " in out
    assert "truncated" in out
    assert out.splitlines()[-1] == "setol header: failed: 2 checkpoints: 1 unreadable"


def test_header_checks_config_patterns(capsys, good):
    (good.parent / "setol.yaml").write_text(
        "layers:\n  - match: nothing.*\n    skip: true\n"
    )
    code, _, err = run(capsys, "header", good)
    assert code == EXIT_USAGE
    assert "pattern 'nothing.*' matches no layer" in err


# shards ---------------------------------------------------------------------


def test_index_covers_its_shards(tmp_path):
    from pytest_setol.cli import drop_indexed_shards

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(
        json.dumps(
            {
                "weight_map": {
                    "a": "model-00001-of-00002.safetensors",
                    "b": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    shard = str(tmp_path / "model-00002-of-00002.safetensors")
    other = str(tmp_path / "other.safetensors")
    assert drop_indexed_shards([shard, str(index), other]) == [str(index), other]
    assert drop_indexed_shards([shard, other]) == [shard, other]


# help -----------------------------------------------------------------------


def _subparsers() -> dict[str, object]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["report", "check", "init", "header"])
def test_help_states_defaults(command):
    subparser = _subparsers()[command]
    for action in subparser._actions:  # type: ignore[attr-defined]
        if not action.option_strings or action.dest == "help":
            continue
        assert "default" in (action.help or ""), f"{command} {action.option_strings}"


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    out = capsys.readouterr().out
    assert excinfo.value.code == 0
    for command in ("report", "check", "init", "header"):
        assert command in out
    assert "exit status: 0 when every rule passes" in out


# progress -------------------------------------------------------------------


def _command(*args: object) -> list[str]:
    return [sys.executable, "-m", "pytest_setol.cli", *(str(a) for a in args)]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CI", None)
    env["COLUMNS"] = "100"
    return env


def test_progress_absent_when_piped(good):
    result = subprocess.run(
        _command("report", good),
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == EXIT_OK
    assert result.stderr == ""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_drawn_on_terminal(good):
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        _command("report", good),
        stdout=subprocess.PIPE,
        stderr=slave,
        env=_environment(),
    )
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], SUBPROCESS_TIMEOUT)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    stdout, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == EXIT_OK
    assert b"model.safetensors" in drawn
    assert b"2/2" in drawn
    assert b"block.0.q" in stdout


def test_progress_absent_in_ci(good):
    import pty

    master, slave = pty.openpty()
    env = _environment()
    env["CI"] = "true"
    result = subprocess.run(
        _command("report", good, "--format", "json"),
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        timeout=SUBPROCESS_TIMEOUT,
    )
    os.close(slave)
    os.set_blocking(master, False)
    try:
        drawn = os.read(master, 4096)
    except (BlockingIOError, OSError):
        drawn = b""
    os.close(master)
    assert result.returncode == EXIT_OK
    assert drawn == b""
