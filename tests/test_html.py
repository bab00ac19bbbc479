"""The HTML report of MiniLM, rendered by headless Chromium and read from its DOM."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pytest_setol.cli import EXIT_FAIL, main
from pytest_setol.config import Config
from pytest_setol.planner import plan_layers
from pytest_setol.reader import open_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.minilm]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Seconds Chromium may take to load and dump the page (about 2 MB of images).
BROWSER_TIMEOUT = 120
#: Milliseconds of page time Chromium runs before dumping the DOM, so the
#: load handler below has run.
VIRTUAL_TIME_BUDGET_MS = 10_000

#: Appended to a copy of the report: after the load event it records on
#: <body> how many images decoded and how many layer rows have a height.
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const decoded = images.filter((i) => i.complete && i.naturalWidth > 0);
  const rows = Array.from(document.querySelectorAll("table.layers tbody tr"));
  document.body.dataset.imagesDecoded = String(decoded.length);
  const visible = rows.filter((r) => r.offsetHeight > 0);
  document.body.dataset.rowsShown = String(visible.length);
});
</script>
"""


def find_browser() -> str:
    """Return a headless-capable Chromium; skip only outside CI when none exists."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI needs Chromium for this test: apt-get install -y chromium")
    pytest.skip("no Chromium installed (apt-get install -y chromium)")


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.layer_rows: list[str] = []
        self.image_sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        elif tag == "tr" and "data-layer" in values:
            self.layer_rows.append(values["data-layer"])
        elif tag == "img":
            self.image_sources.append(values.get("src", ""))


@pytest.fixture(scope="module")
def minilm_html(minilm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("html") / "minilm.html"
    cache = tmp_path_factory.getbasetemp() / "cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SETOL_CACHE_DIR", str(cache))
        code = main(["report", str(minilm), "--format", "html", "--output", str(page)])
    # MiniLM's pooler and three value/key layers exceed alpha 6 by default.
    assert code == EXIT_FAIL
    return page


def render_dom(browser: str, page: Path, profile: Path) -> _Dom:
    probe = page.with_name("probe.html")
    text = page.read_text(encoding="utf-8")
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    dom = _Dom()
    dom.feed(result.stdout)
    return dom


def test_minilm_html_renders(minilm: Path, minilm_html: Path, tmp_path: Path):
    browser = find_browser()
    dom = render_dom(browser, minilm_html, tmp_path / "profile")
    plan = plan_layers(open_checkpoint(minilm), Config())
    names = [layer.name for layer in plan.layers]
    analysed = [layer.name for layer in plan.layers if layer.skip_reason is None]

    assert len(names) == 40
    assert dom.layer_rows == names
    assert dom.body.get("data-rows-shown") == str(len(names))
    # One alpha overview plus one ESD figure per analysed layer.
    assert len(dom.image_sources) == len(analysed) + 1
    assert all(src.startswith("data:image/png;base64,") for src in dom.image_sources)
    assert dom.body.get("data-images-decoded") == str(len(analysed) + 1)
