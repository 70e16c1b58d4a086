"""A real headless Chromium driven through the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages
ending in a NUL byte on file descriptors 3 and 4), so the tests need no WebSocket client and no driver package.

`open_page` loads a file, waits until every plot has rendered, and returns what the page logged to its console,
threw, and asked of the network, with each plot's box; `screenshot` clips one box out of the rendered page."""

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def require_chromium():
    """Skip the test where no Chromium is installed; fail it instead under NNLAB_REQUIRE_BROWSER (.ci/run)."""
    import pytest

    if chromium() is None:
        if os.environ.get("NNLAB_REQUIRE_BROWSER"):
            pytest.fail("NNLAB_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium installed (apt-get install chromium)")


class Browser:
    def __init__(self, profile: Path, *flags: str):
        """flags: more of Chromium's command-line switches (--use-fake-device-for-media-stream: a microphone)."""
        read_here, write_there = os.pipe()  # the browser writes to its fd 4
        read_there, write_here = os.pipe()  # and reads from its fd 3
        # Above 10 first, so that moving them to 3 and 4 in the child cannot overwrite one with the other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (read_there, write_there)]
        os.close(read_there)
        os.close(write_there)
        read_there, write_there = high
        # The shell moves the pipe ends to the descriptors the browser expects, then becomes the browser.
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec "$0" "$@" 3<&{read_there} 4>&{write_there} {read_there}<&- {write_there}>&-',
                chromium(),
                "--headless",
                "--no-sandbox",  # root in a container
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                *flags,
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(read_there, write_there),
        )
        os.close(read_there)
        os.close(write_there)
        self.reader, self.writer = os.fdopen(read_here, "rb"), os.fdopen(write_here, "wb")
        self.next_id, self.events, self.buffer = 0, [], b""

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = os.read(self.reader.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        self.writer.flush()
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._read())
        raise TimeoutError(method)

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


RENDERED = """new Promise((resolve) => {
  const started = Date.now();
  const check = () => {
    const charts = [...document.querySelectorAll('.js-plotly-plot')];
    const done = charts.every((c) => c.querySelector('svg.main-svg'));
    if ((charts.length && done) || Date.now() - started > 30000) {
      resolve(JSON.stringify(charts.map((c) => {
        const r = c.getBoundingClientRect();
        return {id: c.id, x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height,
                rendered: !!c.querySelector('svg.main-svg'), traces: c.querySelectorAll('g.trace, g.pcp-line').length};
      })));
    } else { setTimeout(check, 100); }
  };
  check();
})"""


def open_page(browser: Browser, path: Path) -> tuple[str, dict]:
    """Load `path` in a new tab; returns (session, what happened): plots (id, box, rendered, traces), console
    messages, exceptions, and every network request that was not for a file."""
    session = open_url(browser, path.resolve().as_uri())
    result = browser.send("Runtime.evaluate", session, expression=RENDERED, awaitPromise=True, returnByValue=True)
    plots = json.loads(result["result"]["value"])
    report = {"plots": plots, **page_events(browser, session, own=("file:",))}
    return session, report


def screenshot(browser: Browser, session: str, box: dict, out: Path) -> Path:
    """A PNG of one region of the page (page coordinates), however far down it lies."""
    clip = {k: box[k] for k in ("x", "y", "width", "height")} | {"scale": 1}
    data = browser.send("Page.captureScreenshot", session, format="png", clip=clip, captureBeyondViewport=True)
    out.write_bytes(base64.b64decode(data["data"]))
    return out


def open_url(browser: Browser, url: str) -> str:
    """Load a page in a new tab; returns its session (page_events says what it logged, threw and asked for)."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
        browser.send(f"{domain}.enable", session)
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired")
    return session


def evaluate(browser: Browser, session: str, expression: str):
    """The value of a JavaScript expression in the page (a promise is awaited)."""
    result = browser.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in result:
        raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
    return result["result"].get("value")


def page_events(browser: Browser, session: str, own: tuple[str, ...], errors_only: bool = False) -> dict:
    """What the page logged to its console and the browser's log (only errors: errors_only), the exceptions it threw,
    and each request for anything but what starts with one of `own` (the page's own files or server)."""
    mine = [e for e in browser.events if e.get("sessionId") == session]
    return {
        "console": [
            " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
            for e in mine
            if e["method"] == "Runtime.consoleAPICalled"
            and (not errors_only or e["params"]["type"] in ("error", "assert"))
        ]
        + [
            e["params"]["entry"]["text"]
            for e in mine
            if e["method"] == "Log.entryAdded" and (not errors_only or e["params"]["entry"]["level"] == "error")
        ],
        "exceptions": [
            e["params"]["exceptionDetails"].get("exception", {}).get("description", e["params"]["exceptionDetails"])
            for e in mine
            if e["method"] == "Runtime.exceptionThrown"
        ],
        "requests": [
            e["params"]["request"]["url"]
            for e in mine
            if e["method"] == "Network.requestWillBeSent" and not e["params"]["request"]["url"].startswith(own)
        ],
    }


def set_files(browser: Browser, session: str, selector: str, paths: list[Path]):
    """Choose files in a file input, as a user does in the browser's file dialog."""
    root = browser.send("DOM.getDocument", session, depth=0)["root"]["nodeId"]
    node = browser.send("DOM.querySelector", session, nodeId=root, selector=selector)["nodeId"]
    if not node:
        raise RuntimeError(f"no {selector} in the page")
    browser.send("DOM.setFileInputFiles", session, nodeId=node, files=[str(Path(p).resolve()) for p in paths])


def drag(browser: Browser, session: str, points: list[tuple[float, float]]):
    """Press the mouse's left button at the first point, move it through the others and let go at the last."""
    mouse = lambda kind, x, y, **more: browser.send("Input.dispatchMouseEvent", session, type=kind, x=x, y=y, **more)
    mouse("mouseMoved", *points[0])
    mouse("mousePressed", *points[0], button="left", buttons=1, clickCount=1)
    for x, y in points[1:]:
        mouse("mouseMoved", x, y, button="left", buttons=1)
    mouse("mouseReleased", *points[-1], button="left", buttons=1, clickCount=1)


def page_screenshot(browser: Browser, session: str, out: Path) -> Path:
    """A PNG of the whole page as it is shown."""
    data = browser.send("Page.captureScreenshot", session, format="png", captureBeyondViewport=True)
    out.write_bytes(base64.b64decode(data["data"]))
    return out
