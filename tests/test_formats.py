"""Markdown, HTML and figure output, from the command line and the pytest plugin."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_setol.analysis import analyze
from pytest_setol.formats import parse_report_target, render_html, render_markdown
from pytest_setol.plots import alpha_band, render_figures, write_figures
from pytest_setol.results import Report
from tests.checkpoint_builders import (
    bulk_and_tail,
    matrices,
    mixed_tensors,
    without_seconds,
    write,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Seconds a subprocess of the command may take on a generated checkpoint.
SUBPROCESS_TIMEOUT = 180
MIXED_LAYERS = ["ok", "over", "tiny", "under", "warned"]
#: Layers with an analysed spectrum, so with an ESD figure ("tiny" is skipped).
MIXED_FIGURES = ["ok", "over", "under", "warned"]

# Inner pytester runs inherit this module's warning filters; the mixed
# checkpoint's warn rules emit SetolWarning by design.
pytestmark = pytest.mark.filterwarnings("default::pytest_setol.SetolWarning")


@pytest.fixture(autouse=True)
def spectra_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Keep the command line's spectra cache out of the home directory."""
    monkeypatch.setenv("SETOL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def mixed_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mixed")
    tensors = mixed_tensors()
    tensors["name|with|pipes"] = matrices(seed=7, x=bulk_and_tail())["x"]
    return write(folder / "mixed.safetensors", tensors)


@pytest.fixture(scope="module")
def mixed_report(mixed_path: Path) -> Report:
    return analyze(mixed_path, device="cpu")


@pytest.fixture(scope="module")
def mixed_figures(mixed_report: Report):
    return render_figures(mixed_report)


class _Page(HTMLParser):
    """Collects what the tests check: layer rows, images, external references."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_rows: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "tr" and "data-layer" in values:
            self.layer_rows.append(values["data-layer"])
        if tag == "img":
            self.images.append(values)
        for key in ("src", "href"):
            if key in values and not values[key].startswith(("data:", "#")):
                self.links.append(values[key])


def parse_page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


# Markdown -------------------------------------------------------------------


def test_markdown_violations_first(mixed_report):
    text = render_markdown(mixed_report)
    violations = text.index("| outcome | layer | rule | message |")
    details = text.index("<details>")
    assert text.startswith(
        "## setol report\n\nFailed: 1 checkpoint, 6 matrices: 2 fail,"
    )
    assert violations < details
    assert "| **fail** | `over` | alpha | alpha = 1.5" in text
    assert "| **warn** | `warned` | erg_delta | erg_delta = " in text


def test_markdown_table_lists_every_layer(mixed_report):
    text = render_markdown(mixed_report)
    table = text[text.index("<details>") : text.index("</details>")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `(.*?)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert names == ["name\\|with\\|pipes", *MIXED_LAYERS]
    assert all(row.count(" | ") == 5 for row in rows)


def test_markdown_unreadable_checkpoint(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    from pytest_setol.analysis import error_result, report_settings
    from pytest_setol.errors import CheckpointError
    from pytest_setol.options import AnalysisOptions

    error = CheckpointError(empty, "file is empty")
    report = Report(
        report_settings("cpu", AnalysisOptions()), (error_result(empty, error, None),)
    )
    text = render_markdown(report)
    assert f"**Not analysed:** {empty}: file is empty" in text
    assert "0 fail, 0 warn, 1 unreadable" in text


# HTML -----------------------------------------------------------------------


def test_html_is_self_contained(mixed_report, mixed_figures):
    page = parse_page(render_html(mixed_report, figures=mixed_figures))
    assert page.links == []
    assert "script" not in page.tags
    assert "link" not in page.tags


def test_html_table_lists_every_layer(mixed_report, mixed_figures):
    page = parse_page(render_html(mixed_report, figures=mixed_figures))
    assert page.layer_rows == ["name|with|pipes", *MIXED_LAYERS]


def test_html_embeds_png_figures(mixed_report, mixed_figures):
    page = parse_page(render_html(mixed_report, figures=mixed_figures))
    captions = [image["alt"] for image in page.images]
    assert captions == ["alpha per layer", "name|with|pipes", *MIXED_FIGURES]
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :]).startswith(PNG_SIGNATURE)


def test_html_without_figures_says_why(mixed_report):
    text = render_html(mixed_report, figures=None)
    page = parse_page(text)
    assert page.images == []
    assert "pip install pytest-setol[plot]" in text
    assert page.layer_rows == ["name|with|pipes", *MIXED_LAYERS]


def test_html_escapes_names(tmp_path):
    tensors = matrices(**{"x": bulk_and_tail()})
    tensors["<b>bold</b>"] = tensors.pop("x")
    path = write(tmp_path / "escape.safetensors", tensors)
    text = render_html(analyze(path, device="cpu"))
    assert "<b>bold</b>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text


# Figures --------------------------------------------------------------------


def test_figures_cover_analysed_layers(mixed_figures, mixed_path):
    (checkpoint,) = mixed_figures
    assert checkpoint.path == str(mixed_path)
    assert [f.name for f in checkpoint.layers] == ["name|with|pipes", *MIXED_FIGURES]
    assert checkpoint.overview is not None
    assert checkpoint.overview.startswith(PNG_SIGNATURE)
    assert checkpoint.note is None


def test_write_figures_file_names(mixed_figures, tmp_path):
    written = write_figures(mixed_figures, tmp_path / "plots")
    names = [path.relative_to(tmp_path / "plots").as_posix() for path in written]
    assert names == [
        "mixed.safetensors/overview.png",
        "mixed.safetensors/esd-001-name_with_pipes.png",
        "mixed.safetensors/esd-002-ok.png",
        "mixed.safetensors/esd-003-over.png",
        "mixed.safetensors/esd-004-under.png",
        "mixed.safetensors/esd-005-warned.png",
    ]
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in written)


def test_alpha_band_follows_config(mixed_path, tmp_path):
    config = tmp_path / "band.yaml"
    config.write_text("rules:\n  alpha: {min: 1.5, max: 7.5}\n")
    report = analyze(mixed_path, config=config, device="cpu")
    assert alpha_band(report.checkpoints[0]) == (1.5, 7.5)


# Command line ---------------------------------------------------------------


def test_cli_plot_and_html(mixed_path, tmp_path, capsys):
    from pytest_setol.cli import EXIT_FAIL, main

    page = tmp_path / "report.html"
    plots = tmp_path / "plots"
    code = main(
        [
            "report",
            str(mixed_path),
            "--format",
            "html",
            "--output",
            str(page),
            "--plot",
            str(plots),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_FAIL
    assert f"setol: wrote 6 figures under {plots}" in err
    assert len(parse_page(page.read_text()).images) == 6
    assert len(list((plots / "mixed.safetensors").glob("esd-*.png"))) == 5


def _without_matplotlib(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``setol`` in a process where importing matplotlib fails."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from pytest_setol.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def test_plot_without_matplotlib_exits_2(mixed_path, tmp_path):
    result = _without_matplotlib("report", str(mixed_path), "--plot", str(tmp_path))
    assert result.returncode == 2
    assert "pip install pytest-setol[plot]" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_html_without_matplotlib_writes_tables(mixed_path, tmp_path):
    page = tmp_path / "report.html"
    result = _without_matplotlib(
        "report", str(mixed_path), "--format", "html", "--output", str(page)
    )
    text = page.read_text()
    assert result.returncode == 1
    assert "pip install pytest-setol[plot]" in result.stderr
    assert "pip install pytest-setol[plot]" in text
    assert parse_page(text).layer_rows == ["name|with|pipes", *MIXED_LAYERS]


# pytest plugin ----------------------------------------------------------------


def test_parse_report_target():
    assert parse_report_target("markdown:out/setol.md") == (
        "markdown",
        Path("out/setol.md"),
    )
    assert parse_report_target("html:C:/x.html") == ("html", Path("C:/x.html"))
    with pytest.raises(ValueError, match="expected FORMAT:FILE"):
        parse_report_target("setol.md")
    with pytest.raises(ValueError, match="unknown format 'pdf'"):
        parse_report_target("pdf:setol.pdf")


def test_plugin_writes_every_format(pytester: pytest.Pytester, mixed_path: Path):
    result = pytester.runpytest(
        "--setol",
        str(mixed_path),
        "--setol-report",
        "markdown:out/setol.md",
        "--setol-report",
        "html:out/setol.html",
        "--setol-report",
        "table:out/setol.txt",
        "--setol-report",
        "json:out/long.json",
        "--setol-json",
        "out/short.json",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = pytester.path / "out"
    markdown = (out / "setol.md").read_text()
    assert "| **fail** | `over` | alpha |" in markdown
    page = parse_page((out / "setol.html").read_text())
    assert page.layer_rows == ["name|with|pipes", *MIXED_LAYERS]
    assert len(page.images) == 6
    table = (out / "setol.txt").read_text()
    assert "model summary" in table
    assert "\x1b[" not in table
    short = json.loads((out / "short.json").read_text())
    long = json.loads((out / "long.json").read_text())
    assert without_seconds(short) == without_seconds(long)


def test_plugin_rejects_bad_report_target(pytester: pytest.Pytester, mixed_path: Path):
    result = pytester.runpytest(
        "--setol", str(mixed_path), "--setol-report", "pdf:x.pdf"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--setol-report: unknown format 'pdf' in 'pdf:x.pdf'*"]
    )
