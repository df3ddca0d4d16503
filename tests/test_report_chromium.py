"""report.html opened in headless Chromium (Debian package `chromium`): tables have rows, every image decodes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from test_report import XSS, lowshot_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium is not installed (Debian: apt-get install chromium)")

PROBE = """<script>
window.addEventListener("load", () => {
  const tables = [...document.querySelectorAll("table")];
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    tables: tables.length,
    rows: tables.map(t => t.tBodies.length ? t.tBodies[0].rows.length : 0),
    images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
    alerts: window.__alerts || 0,
  });
  document.body.appendChild(probe);
});
</script>"""
ALERT_TRAP = "<script>window.__alerts = 0; window.alert = () => { window.__alerts += 1; };</script>"


def chromium(user_data: Path, *args: str) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={user_data}", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, folder_root, voc_root) -> Path:
    """A report over real knn records (one named like an XSS payload) and generated low-shot records."""
    from benchmark.runner import RunOptions, run
    from reports.report import build_report

    results = tmp_path_factory.mktemp("results")
    cache = tmp_path_factory.mktemp("cache")
    for seed, name in ((0, "ckA"), (0, XSS)):
        _, stored = run(RunOptions(checkpoint="random:resnet18_cifar", protocol="knn", dataset="folder",
                                   data_root=folder_root, taps=("res3", "res5avg"), results_dir=results,
                                   overrides={"ks": "1,3"}, name=name, seed=seed, cache_dir=cache))
    for name, base in (("ckA", 20.0), (XSS, 25.0)):
        path = results / f"lowshot-{base}" / "lowshot.json"
        path.parent.mkdir()
        path.write_text(json.dumps(lowshot_record(json.loads(stored.read_text()), name, base, 1.0)))
    out = tmp_path_factory.mktemp("report")
    build_report([results], out, formats=["html"], references=True)
    return out / "report.html"


def test_tables_and_images_render_in_chromium(report_html, tmp_path):
    html = report_html.read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("<head>", "<head>" + ALERT_TRAP, 1).replace("</body>", PROBE + "</body>", 1))
    dom = chromium(tmp_path / "profile", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    probe = json.loads(unescape(found.group(1)))
    assert probe["tables"] == html.count("<table") >= 2
    assert all(rows > 0 for rows in probe["rows"]), probe["rows"]
    assert len(probe["images"]) == html.count("<img ") >= 2
    for image in probe["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert probe["alerts"] == 0


def test_screenshot_is_not_blank(report_html, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}", report_html.as_uri())
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, table borders and plot lines, not a single colour
    assert pixels.std() > 0.05
