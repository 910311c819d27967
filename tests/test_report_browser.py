"""The written report in real headless Chromium, offline: renders every section, no errors, not blank.

Chromium is driven directly (no selenium): ``--dump-dom`` of a copy of the page with a small probe script
injected (it records script errors, rendered plot content, loaded resources and the effect of clicking the
controls into a ``<pre>``), and ``--screenshot`` of the page itself. Networking is cut off by the host
resolver rules and an unreachable proxy; the probe also checks that nothing but the file itself was loaded.
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from asymrnr.report import SECTIONS, write_report

from test_report import make_stats, synthetic_schedule, synthetic_stats

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("ASYMRNR_CHROMIUM", "/usr/bin/chromium")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
    # no network: every host name fails to resolve and any proxied request goes nowhere
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--enable-logging=stderr",
    "--v=0",
]

# Installed first in <head>: collect errors before plotly.js runs.
HEAD_PROBE = """<script>
window.__probeErrors = [];
window.addEventListener('error', function (e) { window.__probeErrors.push('error: ' + (e.message || e.type)); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__probeErrors.push('rejection: ' + e.reason); });
(function () { var orig = console.error; console.error = function () {
  window.__probeErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); orig.apply(console, arguments); }; })();
</script>"""

# Injected before </body>: waits for the plots, exercises the controls, writes a JSON summary.
BODY_PROBE = r"""<script>
(function () {
  function click(el) { ['mousedown', 'mouseup', 'click'].forEach(function (t) {
    el.dispatchEvent(new MouseEvent(t, {bubbles: true, cancelable: true, view: window})); }); }
  function visibleNames(gd) { return gd.data.filter(function (t) { return t.visible === true || t.visible === undefined; })
    .map(function (t) { return t.name || ''; }); }
  function menuButtons(gd, i) { return gd.querySelectorAll('g.updatemenu-header-group')[i].querySelectorAll('g.updatemenu-button'); }
  function rendered(gd) {
    return {
      svg: gd.querySelectorAll('svg.main-svg').length,
      heatmaps: gd.querySelectorAll('g.hm image').length,
      lines: gd.querySelectorAll('g.scatterlayer g.trace path.js-line').length,
      fills: gd.querySelectorAll('g.scatterlayer g.trace path.js-fill').length,
      bars: gd.querySelectorAll('g.barlayer g.point path').length,
      texts: gd.querySelectorAll('g.scatterlayer g.trace g.textpoint text').length,
      canvas: gd.querySelectorAll('canvas').length
    };
  }
  function linePaths(gd) {  // the drawn curves: only visible traces are in the DOM
    return Array.prototype.map.call(gd.querySelectorAll('g.scatterlayer g.trace path.js-line'),
      function (p) { return p.getAttribute('d'); }).join('|');
  }
  function finish(out) {
    var pre = document.createElement('pre'); pre.id = 'probe-results'; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  window.addEventListener('load', function () { setTimeout(function () {
    var out = {sections: {}, interactions: {}, errors: null, resources: []};
    try {
      document.querySelectorAll('section').forEach(function (sec) {
        out.sections[sec.id] = {
          notes: Array.prototype.map.call(sec.querySelectorAll('p.note'), function (p) { return p.textContent; }),
          plots: Array.prototype.map.call(sec.querySelectorAll('.plotly-graph-div'), function (gd) {
            return {id: gd.id, ready: !!gd._fullLayout, content: rendered(gd)}; })
        };
      });
      var sim = document.getElementById('fig-similarity');
      if (sim) {
        var seq = [];
        seq.push(visibleNames(sim));
        click(menuButtons(sim, 0)[1]); seq.push(visibleNames(sim));   // feature Q
        click(menuButtons(sim, 1)[1]); seq.push(visibleNames(sim));   // metric cosine
        click(menuButtons(sim, 0)[3]); seq.push(visibleNames(sim));   // feature V (stays cosine)
        click(menuButtons(sim, 1)[0]); seq.push(visibleNames(sim));   // metric Euclidean (stays V)
        out.interactions.similarity = seq;
        out.interactions.similarityHeatmapsAfter = sim.querySelectorAll('g.hm image').length;
        Plotly.Fx.hover(sim, {xval: 5, yval: 2});  // block 2, step 5
      }
      var norms = document.getElementById('fig-norms');
      if (norms) {
        var first = norms.data.findIndex(function (t) { return t.visible === true && t.fill === 'tozeroy'; });
        out.interactions.normsBefore = linePaths(norms);
        var step = norms.layout.sliders[0].steps[norms.layout.sliders[0].steps.length - 1];
        Plotly.animate(norms, step.args[0], step.args[1]);
        out.interactions.normsTraceIndex = first;
      }
      var stab = document.getElementById('fig-stability');
      if (stab) { click(menuButtons(stab, 0)[3]); out.interactions.stability = visibleNames(stab); }
    } catch (e) { out.exception = String(e && e.stack || e); }
    setTimeout(function () {
      try {
        if (norms) {
          out.interactions.normsAfter = linePaths(norms);
          out.interactions.normsVisibleAfter = norms.data[out.interactions.normsTraceIndex].visible;
        }
        if (sim) { out.interactions.hoverText = sim.querySelector('g.hoverlayer').textContent; }
        out.resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
      } catch (e) { out.exception = String(e && e.stack || e); }
      out.errors = window.__probeErrors;
      finish(out);
    }, 1500);
  }, 300); });
})();
</script>"""


def _chromium(args: list[str], profile: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (install Debian's chromium or set ASYMRNR_CHROMIUM)")
    return CHROMIUM


def _probe(page: Path, tmp: Path) -> tuple[dict, str]:
    text = page.read_text(encoding="utf-8")
    assert text.count("<head>") == 1 and text.count("</body>") == 1
    probe = tmp / "probe.html"
    probe.write_text(text.replace("<head>", "<head>" + HEAD_PROBE, 1).replace("</body>", BODY_PROBE + "</body>", 1),
                     encoding="utf-8")
    proc = _chromium(["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], tmp / "profile-dom")
    m = re.search(r'<pre id="probe-results">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the probe wrote no results; chromium rc={proc.returncode}, stderr tail:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(m.group(1))), proc.stderr


def test_report_renders_offline_in_chromium(chromium, tmp_path):
    stats = synthetic_stats(runs=3, blocks=8, steps=12)
    page = write_report(stats, tmp_path / "report.html", schedule=synthetic_schedule(stats))
    out, stderr = _probe(page, tmp_path)

    assert "exception" not in out, out["exception"]
    assert out["errors"] == []
    assert "Uncaught" not in stderr
    # nothing but the page itself was loaded (plotly.js, CSS and data are inline)
    assert [r for r in out["resources"] if not r.startswith(("file:", "data:", "blob:"))] == []

    figures = {
        "similarity": ["fig-similarity"],
        "trends": ["fig-trends"],
        "norms": ["fig-norms"],
        "stability": ["fig-stability"],
        "schedule": ["fig-rates", "fig-savings"],
    }
    assert set(out["sections"]) == {sid for sid, _ in SECTIONS}
    for sid, ids in figures.items():
        plots = out["sections"][sid]["plots"]
        assert [p["id"] for p in plots] == ids, sid
        for p in plots:
            c = p["content"]
            assert p["ready"] and c["svg"] >= 1, (sid, p)
            drawn = c["heatmaps"] + c["lines"] + c["bars"] + c["canvas"]
            assert drawn > 0, (sid, p)
    sec = out["sections"]
    assert sec["similarity"]["plots"][0]["content"]["heatmaps"] >= 1
    assert sec["trends"]["plots"][0]["content"]["fills"] >= 3  # one band per group (3 runs)
    assert sec["stability"]["plots"][0]["content"]["heatmaps"] == 2
    assert sec["schedule"]["plots"][0]["content"]["heatmaps"] == 4  # (similarity, rate) x (Q, KV)
    assert sec["schedule"]["plots"][1]["content"]["bars"] == 8
    # the two similarity switches are independent: each keeps the other's choice
    assert out["interactions"]["similarity"] == [
        ["H \u00b7 Euclidean"], ["Q \u00b7 Euclidean"], ["Q \u00b7 cosine"], ["V \u00b7 cosine"], ["V \u00b7 Euclidean"],
    ]
    assert out["interactions"]["similarityHeatmapsAfter"] >= 1
    hover = out["interactions"]["hoverText"]
    for part in ("block 2, step 5", "timestep", "standardized", "median", "p95", "max", "V \u00b7 Euclidean"):
        assert part in hover, (part, hover)
    # the step slider swaps the data of the shown block, not which block is shown
    assert out["interactions"]["normsBefore"] and out["interactions"]["normsAfter"]
    assert out["interactions"]["normsAfter"] != out["interactions"]["normsBefore"]
    assert out["interactions"]["normsVisibleAfter"] is True
    assert out["interactions"]["stability"] == ["V", "V"]


def test_partial_report_renders_notes_in_chromium(chromium, tmp_path):
    stats = make_stats(runs=1, features=("q", "k", "v"))
    page = write_report(stats, tmp_path / "partial.html")
    out, _ = _probe(page, tmp_path)
    assert out["errors"] == [] and "exception" not in out
    sec = out["sections"]
    assert any("no confidence band" in n for n in sec["trends"]["notes"])
    assert any("No schedule given" in n for n in sec["schedule"]["notes"])
    assert sec["schedule"]["plots"] == []
    assert any(n.startswith("H") and "not recorded" in n for n in sec["similarity"]["notes"])
    for sid in ("similarity", "trends", "norms", "stability"):
        assert sec[sid]["plots"] and sec[sid]["plots"][0]["content"]["svg"] >= 1, sid


def test_screenshot_is_not_blank(chromium, tmp_path):
    from PIL import Image

    stats = synthetic_stats(runs=3, blocks=8, steps=12)
    page = write_report(stats, tmp_path / "report.html", schedule=synthetic_schedule(stats))
    shot = tmp_path / "report.png"
    proc = _chromium(["--window-size=1280,3200", "--virtual-time-budget=15000", f"--screenshot={shot}", page.as_uri()],
                     tmp_path / "profile-shot")
    assert shot.exists(), proc.stderr[-3000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 3200)
    small = np.asarray(img.resize((320, 800)), dtype=np.int32)  # [800, 320, 3]
    colors = np.unique(small.reshape(-1, 3), axis=0)
    assert len(colors) > 200  # text, heatmaps, lines: far from a blank or single-colour page
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    background = ((r == 250) & (g == 250) & (b == 250)) | ((r == 255) & (g == 255) & (b == 255))
    assert 1.0 - background.mean() > 0.10
    # the heatmaps' Viridis colours are on the page (plots drew, not just the HTML text)
    assert int(((g > r + 30) & (b > r)).sum()) > 500
