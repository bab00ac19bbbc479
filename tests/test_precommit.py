"""The pre-commit hooks, run by real pre-commit on real commits in a temporary repo.

The hook repository is a snapshot of this checkout (tracked and untracked,
not ignored files) committed to a temporary git repository, so the test runs
the working tree's ``.pre-commit-hooks.yaml`` and code as pre-commit installs
them: into its own virtual environment, from the package registries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_builders import bulk_and_tail, matrices, pareto, write

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: Seconds for one pre-commit call; the first builds the hook environment,
#: and the torch variant installs a CPU torch wheel.
PRE_COMMIT_TIMEOUT = 900
#: The torch pin of the README's torch-pickle variant. An unpinned torch
#: would resolve to a multi-GB CUDA build; this one is a CPU wheel.
TORCH_PIN = "torch==2.13.0"
CHECKPOINT_FILES = r"\.(safetensors|gguf)$|\.safetensors\.index\.json$"
#: What the hooks install beside the package: the GGUF reader, never torch.
BASE_DEPENDENCIES = ["pytest-setol[gguf]"]
#: The ``files`` override of the torch-pickle variant.
TORCH_FILES = r"\.(pt|pth|bin|ckpt)$|\.bin\.index\.json$"


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=_env()
    )


def _env(home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="setol test",
        GIT_AUTHOR_EMAIL="setol@example.invalid",
        GIT_COMMITTER_NAME="setol test",
        GIT_COMMITTER_EMAIL="setol@example.invalid",
        GIT_CONFIG_NOSYSTEM="1",
    )
    env.pop("CI", None)
    if home is not None:
        env["PRE_COMMIT_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Commit a snapshot of this checkout; return its path and commit id."""
    if shutil.which("git") is None:
        pytest.fail("git is required for the pre-commit tests")
    snapshot = tmp_path_factory.mktemp("hook-repo")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = snapshot / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    _git(snapshot, "init", "-q")
    _git(snapshot, "add", "-A")
    _git(snapshot, "commit", "-q", "-m", "snapshot")
    return snapshot, _git(snapshot, "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One hook-environment cache for the module, so each environment builds once."""
    home = tmp_path_factory.mktemp("pre-commit-home")
    yield home
    shutil.rmtree(home, ignore_errors=True)


class Project:
    """A git repository with pre-commit hooks installed, committing for real."""

    def __init__(self, path: Path, home: Path, config: str) -> None:
        self.path = path
        self.home = home
        path.mkdir(parents=True)
        _git(path, "init", "-q")
        (path / ".pre-commit-config.yaml").write_text(config, encoding="utf-8")
        self.pre_commit("install")
        _git(path, "add", ".pre-commit-config.yaml")
        _git(path, "commit", "-q", "--no-verify", "-m", "add pre-commit config")

    def pre_commit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pre_commit", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            env=_env(self.home),
            timeout=PRE_COMMIT_TIMEOUT,
        )

    def commit(self, *files: Path) -> subprocess.CompletedProcess[str]:
        """Stage ``files`` and commit them, hooks included; return git's result."""
        _git(self.path, "add", *(str(f.relative_to(self.path)) for f in files))
        return subprocess.run(
            ["git", "commit", "-m", "update checkpoints"],
            cwd=self.path,
            capture_output=True,
            text=True,
            env=_env(self.home),
            timeout=PRE_COMMIT_TIMEOUT,
        )

    def commits(self) -> int:
        return int(_git(self.path, "rev-list", "--count", "HEAD").stdout)


def _config(repo: Path, rev: str, hooks: str) -> str:
    return f"repos:\n  - repo: {repo}\n    rev: {rev}\n    hooks:\n{hooks}"


@pytest.fixture
def project(
    tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path
) -> Project:
    repo, rev = hook_repo
    hooks = "      - id: setol-check\n      - id: setol-header\n"
    return Project(tmp_path / "project", pre_commit_home, _config(repo, rev, hooks))


def good_tensors() -> dict[str, np.ndarray]:
    return matrices(block__0__q=bulk_and_tail(), block__1__q=bulk_and_tail())


def bad_tensors() -> dict[str, np.ndarray]:
    return matrices(block__0__q=bulk_and_tail(), over=pareto(1.5))


def test_manifest_matches_checkpoint_files():
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    by_id = {hook["id"]: hook for hook in hooks}
    assert set(by_id) == {"setol-check", "setol-header"}
    assert by_id["setol-check"]["entry"] == "setol check"
    assert by_id["setol-header"]["entry"] == "setol header"
    for hook in hooks:
        assert hook["language"] == "python"
        assert hook["files"] == CHECKPOINT_FILES
        assert hook["require_serial"] is True
        assert hook["additional_dependencies"] == BASE_DEPENDENCIES


def test_good_checkpoint_commits(project: Project):
    result = project.commit(write(project.path / "good.safetensors", good_tensors()))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "setol check (HTSR alpha and ERG thresholds)" in output
    assert "setol header (checkpoint headers, dtypes and shapes)" in output
    assert "Failed" not in output
    assert project.commits() == 2


def test_hook_environment_has_no_torch(project: Project, pre_commit_home: Path):
    result = project.commit(write(project.path / "good.safetensors", good_tensors()))
    assert result.returncode == 0, result.stdout + result.stderr
    base = [
        folder
        for folder in pre_commit_home.glob("repo*/py_env-*")
        if json.loads((folder / ".install_state_v1").read_text())
        == {"additional_dependencies": BASE_DEPENDENCIES}
    ]
    assert len(base) == 1
    probe = subprocess.run(
        [str(base[0] / "bin" / "python"), "-c", "import pytest_setol, torch"],
        capture_output=True,
        text=True,
        timeout=PRE_COMMIT_TIMEOUT,
    )
    assert probe.returncode != 0
    assert "No module named 'torch'" in probe.stderr


def write_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """Write float32 ``tensors`` as a GGUF file with gguf's own writer."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "test")
    for name, values in tensors.items():
        writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_checkpoints_gated(project: Project):
    good = write_gguf(project.path / "good.gguf", good_tensors())
    result = project.commit(good)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = write_gguf(project.path / "bad.gguf", bad_tensors())
    result = project.commit(bad)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "fail  bad.gguf::over: alpha = 1.5" in output
    assert project.commits() == 2


def test_bad_checkpoint_blocks_commit(project: Project):
    result = project.commit(write(project.path / "bad.safetensors", bad_tensors()))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "- hook id: setol-check" in output
    assert "- exit code: 1" in output
    assert "fail  bad.safetensors::over: alpha = 1.5" in output
    assert "is below the minimum 2" in output
    assert "setol check: failed: 1 checkpoint, 2 matrices: 1 fail, 1 warn" in output
    assert project.commits() == 1


def test_truncated_checkpoint_fails_header_hook(project: Project):
    path = write(project.path / "cut.safetensors", good_tensors())
    path.write_bytes(path.read_bytes()[:-64])
    result = project.commit(path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "- hook id: setol-header" in output
    assert "- exit code: 2" in output
    assert "error cut.safetensors: " in output
    assert project.commits() == 1


def test_init_baseline_lets_commit_pass(project: Project):
    from pytest_setol.cli import main

    checkpoint = write(project.path / "model" / "bad.safetensors", bad_tensors())
    assert main(["init", str(checkpoint), "--no-progress"]) == 0
    result = project.commit(checkpoint, project.path / "model" / "setol.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert project.commits() == 2


def test_torch_pickle_variant(
    tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_home: Path
):
    torch = pytest.importorskip("torch")
    repo, rev = hook_repo
    dependencies = f'["pytest-setol[torch]", "{TORCH_PIN}"]'
    hooks = "".join(
        f"      - id: {hook}\n"
        f"        files: '{TORCH_FILES}'\n"
        f"        additional_dependencies: {dependencies}\n"
        for hook in ("setol-check", "setol-header")
    )
    project = Project(tmp_path / "project", pre_commit_home, _config(repo, rev, hooks))

    good = project.path / "good.pt"
    torch.save({k: torch.from_numpy(v) for k, v in good_tensors().items()}, good)
    result = project.commit(good)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "setol header (checkpoint headers, dtypes and shapes)" in output
    assert "Failed" not in output

    bad = project.path / "bad.pt"
    torch.save({k: torch.from_numpy(v) for k, v in bad_tensors().items()}, bad)
    result = project.commit(bad)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "fail  bad.pt::over: alpha = 1.5" in output
    assert project.commits() == 2
