"""The HTML report, end to end, in a real headless browser (Debian's chromium, driven over the
DevTools protocol on a pipe): a GPT ckpt-resume case (curves, run 2 over run 1, the resume
step), a script case against a golden with planted wrong steps (failing steps marked), an
a2a_overlap case with a planted schedule bug (mismatching tensors, heatmaps) and a crashing
script (log tail). The page must load without console errors, its filters must work, and
screenshots of the plots must show the plot colours.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GPT_CASE = "gpt3_mcore_te_tp1_pp1_resume_torch_dist_dist_optimizer"
ACTUAL, LATER, FAIL = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0xD6, 0x27, 0x28)

SPEC = """
defaults:
  timeout: 300
  env: {ATEN_CPU_CAPABILITY: avx2, MKL_CBWR: AVX2, DNNL_MAX_CPU_ISA: AVX2}
cases:
  - name: toy_planted
    kind: script
    tags: [toy]
    resources: {nproc_per_node: 1}
    golden: {file: planted_golden.json}
    args: {script: toy_ddp.py, argv: ["--steps", "12"], steps: [1, 12]}
    compare: {metrics: {iteration-time: {skip: true}}}
  - name: a2a_fault
    kind: a2a_overlap
    resources: {nproc_per_node: 2}
    args: {variant: moe, hidden: 32, heads: 2, seq_len: 16, microbatches: 3, inject_fault: skip_weight_restore}
  - name: crash
    kind: script
    resources: {nproc_per_node: 1}
    args: {script: crash.py, golden: false}
"""
CRASH = "print('about to fail: step 3 diverged')\nraise SystemExit('boom: the loss is nan')\n"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium as root)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


class Browser:
    """A headless chromium driven with the DevTools protocol over --remote-debugging-pipe
    (fd 3: commands to the browser, fd 4: its answers; messages end with NUL)."""

    def __init__(self, tmp: Path) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        self._wfd, self._rfd = to_w, from_r
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
               "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}", "about:blank"]
        # the child sees our pipe ends as fds 3 and 4 (kept open: listed in pass_fds)
        def wire() -> None:
            hi_r, hi_w = os.dup(to_r), os.dup(from_w)   # out of the way of 3 and 4 first
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)
            os.close(hi_r)
            os.close(hi_w)
        self.proc = subprocess.Popen(cmd, pass_fds=(to_r, from_w, 3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self, timeout: float = 120) -> dict[str, Any]:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._rfd], [], [], timeout)
            if not ready:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._rfd, 1 << 20)
            if not chunk:
                raise EOFError("chromium closed the pipe")
            self._buf += chunk
        msg, _, self._buf = self._buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._wfd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        while True:
            for e in self.events:
                if e.get("method") == method:
                    self.events.remove(e)
                    return e
            self.events.append(self._read())

    def open(self, url: str) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=1400, height=1000,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def console_errors(self) -> list[str]:
        self.js("1")  # flush pending events
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("exception", {}).get("description")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(str(p["entry"].get("text")))
        return out

    def screenshot(self, selector: str, path: Path) -> Path:
        rect = self.js(f"(function(){{var el=document.querySelector({json.dumps(selector)});el.scrollIntoView();"
                       "var r=el.getBoundingClientRect();return {x:r.x+window.scrollX,y:r.y+window.scrollY,"
                       "width:r.width,height:r.height};})()")
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={**rect, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (EOFError, OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._wfd)
        os.close(self._rfd)


def colour_pixels(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> int:
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB")).astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=2) <= tol).sum())


def pixel_std(png: Path) -> float:
    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(png).convert("L")).std())


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Any]:
    """One real run of four cases with --html; the page, its results and the project dir."""
    from runner.testing import RunnerProject

    project = RunnerProject(tmp_path_factory.mktemp("project"))
    project.write("specs/report.yaml", SPEC)
    shutil.copy(REPO / "specs/examples/scripts/toy_ddp.py", project.path / "specs/toy_ddp.py")
    project.write("specs/crash.py", CRASH)
    # the GPT case as the project ships it, less its timing check (wall time on a shared CPU is noise)
    gpt = yaml.safe_load((REPO / "specs/functional/gpt3.yaml").read_text())
    gpt["cases"] = [c for c in gpt["cases"] if c["name"] == GPT_CASE]
    cpu = gpt["defaults"]["profiles"]["cpu"]
    cpu.setdefault("compare", {}).setdefault("metrics", {})["iteration-time"] = {"skip": True}
    project.write("specs/gpt3.yaml", yaml.safe_dump(gpt, sort_keys=False))
    shutil.copytree(REPO / "golden" / GPT_CASE, project.path / "golden" / GPT_CASE)
    # a golden recorded by the runner itself, then two of its steps planted wrong
    rec = project.run("golden", "update", "specs/report.yaml", "-k", "toy_planted", "--results-dir",
                      str(project.path / "results-golden"))
    assert rec.exit_code == 0, rec
    golden_file = project.path / "specs/planted_golden.json"
    doc = json.loads(golden_file.read_text())
    for step in ("4", "9"):
        doc["lm loss"]["values"][step] *= 1.5
    golden_file.write_text(json.dumps(doc))
    html = project.path / "report.html"
    run = project.run("run", "specs", "-k", f"toy_planted or a2a_fault or crash or {GPT_CASE}", "--html", str(html),
                      "--progress", "plain")
    return {"project": project, "run": run, "html": html}


@pytest.mark.slow
def test_html_report_renders_in_a_browser(report, tmp_path: Path) -> None:
    run, html = report["run"], report["html"]
    assert run.exit_code == 1, run
    assert run.verdicts == {"toy_planted": "FAILED", "a2a_fault": "FAILED", "crash": "ERROR", GPT_CASE: "PASSED"}, run
    text = html.read_text()
    # self-contained: nothing is fetched (namespace URIs are names, not requests)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)|@import""", text)
    browser = Browser(tmp_path)
    try:
        browser.open(html.as_uri())
        assert browser.console_errors() == []
        assert browser.js("document.querySelectorAll('#verdicts tbody tr').length") == 4
        # one figure per metric of the golden; the GPT case's curves include run 2 and the resume step
        gpt = f"section[data-case$='{GPT_CASE}']"
        assert browser.js(f"document.querySelectorAll(\"{gpt} figure.metric svg\").length") >= 4
        assert "resume @ 10" in browser.js(f"document.querySelector(\"{gpt} figure[data-metric='lm loss']\").textContent")
        # the planted golden: its failing steps are named; the a2a fault: tensors and heatmaps
        toy = "section[data-case$='toy_planted']"
        assert "failing steps (2)" in browser.js(f"document.querySelector(\"{toy} figure[data-metric='lm loss']\").textContent")
        a2a = "section[data-case$='a2a_fault']"
        assert browser.js(f"document.querySelectorAll(\"{a2a} table.mismatches tbody tr\").length") > 0
        assert browser.js(f"document.querySelectorAll(\"{a2a} figure.heatmap svg\").length") >= 1
        crash = "section[data-case$='crash']"
        assert "about to fail: step 3 diverged" in browser.js(f"document.querySelector(\"{crash} pre\").textContent")
        assert "boom: the loss is nan" in browser.js(f"document.querySelector(\"{crash}\").textContent")
        # filters: by verdict, by kind, by text
        browser.js("var b=document.querySelector('input.verdict-filter[value=FAILED]');b.checked=false;"
                   "b.dispatchEvent(new Event('change'))")
        assert browser.js("document.getElementById('shown').textContent") == "2"
        browser.js("var b=document.querySelector('input.verdict-filter[value=FAILED]');b.checked=true;"
                   "b.dispatchEvent(new Event('change'));var k=document.getElementById('kind-filter');"
                   "k.value='script';k.dispatchEvent(new Event('change'))")
        assert browser.js("document.getElementById('shown').textContent") == "2"
        browser.js("var k=document.getElementById('kind-filter');k.value='';k.dispatchEvent(new Event('change'));"
                   "var t=document.getElementById('text-filter');t.value='pp1_resume';t.dispatchEvent(new Event('input'))")
        assert browser.js("document.getElementById('shown').textContent") == "1"
        assert browser.js(f"document.querySelector(\"{a2a}\").classList.contains('hidden')") is True
        browser.js("var t=document.getElementById('text-filter');t.value='';t.dispatchEvent(new Event('input'))")
        shots = Path(os.environ.get("RUNNER_REPORT_SHOTS", tmp_path))
        gpt_png = browser.screenshot(f"{gpt} .plots", shots / "gpt.png")
        toy_png = browser.screenshot(f"{toy} figure[data-metric='lm loss']", shots / "toy.png")
        heat_png = browser.screenshot(f"{a2a} figure.heatmap", shots / "heatmap.png")
        assert browser.console_errors() == []
    finally:
        browser.close()
    # the screenshots show plots, not a blank page: contrast, and the plot colours are there
    for png in (gpt_png, toy_png, heat_png):
        assert pixel_std(png) > 10, png
    assert colour_pixels(gpt_png, ACTUAL) > 500 and colour_pixels(gpt_png, LATER) > 300
    assert colour_pixels(toy_png, FAIL) > 20
    assert colour_pixels(heat_png, (0, 0, 4), tol=60) + colour_pixels(heat_png, (252, 255, 164), tol=60) > 200


@pytest.mark.slow
def test_browser_check_catches_a_broken_page(report, tmp_path: Path) -> None:
    """Negative control: the same page with a planted script error must report it."""
    broken = tmp_path / "broken.html"
    broken.write_text(report["html"].read_text().replace("<script>", "<script>undefinedFunction();", 1))
    browser = Browser(tmp_path)
    try:
        browser.open(broken.as_uri())
        errors = browser.console_errors()
    finally:
        browser.close()
    assert any("undefinedFunction" in e for e in errors), errors


@pytest.mark.slow
def test_history_lists_the_runs_of_the_test(report) -> None:
    project = report["project"]
    shown = project.run("history", "toy_planted")
    assert shown.exit_code == 0, shown
    lines = shown.stdout
    assert "specs/report.yaml::toy_planted: 2 runs" in lines, shown   # golden update + the run
    assert "FAILED" in lines and "PASSED" in lines and "lm loss (last)" in lines
    # the failing golden case's detail says it passed before with another golden: the golden changed
    detail = report["run"].case("toy_planted")["detail"]
    assert "[history: PASSED on this platform before" in detail and "different golden file" in detail, detail
    gpt = project.run("history", GPT_CASE)
    assert gpt.exit_code == 0 and "1 run " in gpt.stdout and "PASSED" in gpt.stdout, gpt
