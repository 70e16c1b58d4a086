"""nnlab demo: the page of an image, a text and an audio model (an export, a checkpoint, an export), served on
127.0.0.1 only and driven in a real headless Chromium (Debian's) as a user drives it: a digit drawn with the mouse,
files chosen in the file inputs, a review typed, a clip recorded from Chromium's fake microphone. Each file's top
class is the one `nnlab predict` gives for it; the bad inputs (an empty drawing, a file that is not an image or not
audio, an empty text, an image of 10,000 x 10,000 pixels) get a message in the page and the page goes on
classifying. Screenshots are kept with the test's files."""

import io
import json
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from nnlab import kinds
from tests.browser import Browser, drag, evaluate, open_url, page_events, page_screenshot, require_chromium, set_files
from tests.helpers import ROOT, run_module, user_env, write_inputs
from tests.slurm_cluster import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export")]  # the models of tests/test_export.py, trained once


@pytest.fixture
def browser(tmp_path):
    require_chromium()
    # Chromium's fake microphone (a beep), its permission granted: the audio page records as a user does
    browser = Browser(tmp_path / "profile", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
    yield browser
    browser.close()


def listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net says them) of the sockets listening on this port."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                found.append(local.rsplit(":", 1)[0])
    return found


@contextmanager
def served(model: Path, cwd: Path, *more: str):
    """`nnlab demo MODEL --port P` running; yields (its URL, the process). Ctrl-C stops it, which must end cleanly."""
    port = free_port()
    log = (cwd / f"demo-{port}.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlab", "demo", str(model), "--port", str(port), *more],
        cwd=cwd,
        env=user_env(),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        ready, deadline = "", time.monotonic() + 120
        while "nnlab demo:" not in ready and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1)[0]:
                ready += proc.stdout.readline()
        log.seek(0)
        assert "nnlab demo:" in ready, f"the demo did not start:\n{ready}\n{log.read()[-3000:]}"
        assert f"http://127.0.0.1:{port}/" in ready
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    log.seek(0)
    errors = log.read()
    assert "Traceback" not in errors, errors[-3000:]


class Page:
    """The demo in a browser tab."""

    def __init__(self, browser: Browser, url: str, shots: Path):
        self.browser, self.shots = browser, shots
        self.session = open_url(browser, url)
        self.js("""new Promise((resolve, reject) => {
          const started = Date.now();
          const check = () => document.querySelector('#classes') ? resolve(true)
            : Date.now() - started > 60000 ? reject('no page') : setTimeout(check, 100);
          check();
        })""")
        time.sleep(1)  # the canvas and the file inputs finish setting up

    def js(self, expression: str):
        return evaluate(self.browser, self.session, expression)

    def submit(self, button: str) -> dict:
        """Press the button and wait for the answer: {top: the top class, classes: [(name, percent)], message}."""
        answer = self.js(
            """new Promise((resolve) => {
          const busy = () => [...document.querySelectorAll('#classes, #message, #seen')].some(
            (block) => [...block.querySelectorAll('[data-testid=status-tracker]')].some(
              (t) => !t.classList.contains('hide')));
          document.querySelector('BUTTON').click();
          const started = Date.now();
          let seen = false;
          const check = () => {
            if (busy()) seen = true;
            const waited = Date.now() - started;
            if ((seen && !busy()) || waited > 90000 || (!seen && waited > 5000)) {
              const seenImage = document.querySelector('#seen img');
              resolve(JSON.stringify({
                top: (document.querySelector('#classes .output-class') || {}).textContent || '',
                classes: [...document.querySelectorAll('#classes .confidence-set')].map(
                  (row) => [row.querySelector('dt').textContent.trim(), row.querySelector('dd').textContent.trim()]),
                message: (document.querySelector('#message .prose') || {}).innerText || '',
                seen: seenImage ? seenImage.src : '',
              }));
            } else { setTimeout(check, 25); }
          };
          check();
        })""".replace("BUTTON", button)
        )
        answer = json.loads(answer)
        answer["top"], answer["message"] = answer["top"].strip(), answer["message"].strip()
        if answer["seen"]:  # the image as the network reads it, as the page shows it
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(answer["seen"], timeout=30) as f:
                answer["seen"] = np.asarray(Image.open(io.BytesIO(f.read())))
        return answer

    def choose(self, selector: str, path: Path):
        """A file chosen in the file input and uploaded (the component then shows it)."""
        set_files(self.browser, self.session, selector, [path])
        time.sleep(1.5)

    def screenshot(self, name: str) -> Path:
        return page_screenshot(self.browser, self.session, self.shots / f"{name}.png")

    def events(self) -> dict:
        return page_events(self.browser, self.session, own=("http://127.0.0.1:", "data:", "blob:"), errors_only=True)


def top_class(model: Path, item) -> str:
    """The top class nnlab predict gives this input (its reading and scoring, in this process)."""
    from nnlab.predict import opened

    preprocessing, score, _ = opened(model)
    ((probabilities, _),) = kinds.classify(kinds.kind(preprocessing["kind"]), preprocessing, [str(item)], score)
    best = probabilities[probabilities.max(1).argmax()]  # a long clip: its most confident window, as the page shows
    return preprocessing["class_names"][int(best.argmax())]


def kinds_of_words(export: Path) -> list[str]:
    return json.loads((export / "nnlab.json").read_text())["classes"]


def assert_clean(page: Page):
    events = page.events()
    assert not events["console"] and not events["exceptions"], events
    assert not events["requests"], f"the page asked for something beyond its server: {events['requests']}"


def test_the_demo_page_classifies_what_is_drawn_uploaded_typed_and_recorded_and_says_what_it_cannot(
    checkpoint, exported, browser, tmp_path
):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    inputs = tmp_path / "inputs"
    image, wide, _, _ = write_inputs("image", inputs)
    short, long, _, _ = write_inputs("audio", inputs)
    not_media = inputs / "notes.txt"
    not_media.write_text("these are notes, not a picture and not a sound\n")
    for fake in ("notes.png", "notes.wav"):
        (inputs / fake).write_bytes(not_media.read_bytes())
    huge = Image.new("L", (10_000, 10_000), 0)
    ImageDraw.Draw(huge).rectangle((4_000, 2_000, 6_000, 8_000), fill=255)
    huge.save(inputs / "huge.png")

    # An image model's export: a drawn digit, uploads, the bad ones between good ones.
    export = exported("mnist-cnn")
    with served(export, tmp_path) as (url, _):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        assert listening(port) == ["0100007F"], "the demo must listen on 127.0.0.1 alone"
        page = Page(browser, url, shots)
        assert_clean(page)
        page.screenshot("image-loaded")
        answer = page.submit("#classify-drawing")
        assert "The drawing is empty" in answer["message"] and not answer["top"], answer
        box = json.loads(
            page.js("""JSON.stringify((() => {
              const r = [...document.querySelectorAll('#drawing canvas')].map((c) => c.getBoundingClientRect())
                .sort((a, b) => b.width * b.height - a.width * a.height)[0];
              return {x: r.x, y: r.y, width: r.width, height: r.height};
            })())""")
        )
        middle, top, height = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.25, box["height"] * 0.5
        drag(browser, page.session, [(middle, top + height * i / 20) for i in range(21)])  # a "1"
        answer = page.submit("#classify-drawing")
        assert answer["top"] and len(answer["classes"]) == 5 and len(answer["seen"]) and not answer["message"], answer
        assert answer["seen"].shape == (224, 224) and answer["seen"].max() == 255 and answer["seen"][0, 0] == 0
        page.screenshot("image-drawn")
        preprocessing = json.loads((export / "nnlab.json").read_text())["preprocessing"]
        page.js("document.querySelector('#upload-tab-button').click()")
        time.sleep(1)
        for path, expected in ((image, top_class(export, image)), (wide, top_class(export, wide))):
            page.choose("#image input[type=file]", path)
            answer = page.submit("#classify-image")
            assert answer["top"] == expected, (path, answer)
            (pixels,), _ = kinds.kind("image").raw(preprocessing, path)
            assert np.array_equal(answer["seen"], pixels[0].repeat(8, 0).repeat(8, 1)), "not the image as read"
        assert "wide.jpg is 57x41 pixels: read as" in answer["message"], answer
        page.screenshot("image-uploaded")
        page.choose("#image input[type=file]", inputs / "notes.png")
        answer = page.submit("#classify-image")
        assert "notes.png is not an image" in answer["message"] and not answer["top"], answer
        page.screenshot("image-not-an-image")
        page.choose("#image input[type=file]", inputs / "huge.png")
        answer = page.submit("#classify-image")
        assert answer["top"] == top_class(export, inputs / "huge.png"), answer
        assert "huge.png is 10000x10000 pixels: read as" in answer["message"], answer
        page.screenshot("image-huge")
        assert not page.events()["exceptions"]

    # A text model's checkpoint: a review typed in, an empty text, the longest text.
    model = checkpoint("imdb-lstm")
    with served(model, tmp_path) as (url, _):
        page = Page(browser, url, shots)
        assert_clean(page)
        answer = page.submit("#classify-text")
        assert "Nothing to classify" in answer["message"] and not answer["top"], answer
        review = "A wonderful moving film, great acting. Seen twice."
        page.js("document.querySelector('#text textarea').focus()")
        browser.send("Input.insertText", page.session, text=review)
        answer = page.submit("#classify-text")
        assert answer["top"] == top_class(model, review) and not answer["message"], answer
        page.screenshot("text")

    # An audio model's export: clips shorter and longer than the model's second, a file that is not audio.
    export = exported("speech-rnn")
    with served(export, tmp_path) as (url, _):
        page = Page(browser, url, shots)
        assert_clean(page)
        answer = page.submit("#classify-audio")
        assert "No clip" in answer["message"], answer
        page.choose("#audio input[type=file]", inputs / "notes.wav")
        answer = page.submit("#classify-audio")
        assert "notes.wav is not audio" in answer["message"] and not answer["top"], answer
        page.screenshot("audio-not-audio")
        for path in (short, long):
            page.js("document.querySelector('#audio button[aria-label=Clear]')?.click()")
            page.choose("#audio input[type=file]", path)
            answer = page.submit("#classify-audio")
            assert answer["top"] == top_class(export, path), (path, answer)
        assert "long.wav is longer than the model's clip: read in" in answer["message"], answer
        page.screenshot("audio")
        page.js("document.querySelector('#audio button[aria-label=Clear]')?.click()")
        page.js("document.querySelector('#audio button[aria-label=\"Record audio\"]').click()")
        time.sleep(1)
        button = "[...document.querySelectorAll('#audio button')].find((b) => b.textContent.trim() == 'WORD').click()"
        page.js(button.replace("WORD", "Record"))
        time.sleep(2)
        page.js(button.replace("WORD", "Stop"))
        time.sleep(2)
        answer = page.submit("#classify-audio")  # the recording, as Gradio sends it: a WAV file
        assert answer["top"] in kinds_of_words(export) and "audio.wav" in answer["message"], answer
        page.screenshot("audio-recorded")


def test_the_demo_command_says_in_one_line_what_it_cannot_serve(checkpoint, tmp_path):
    """A missing model, a port already taken, a port that is no port."""
    proc = run_module("nnlab", "demo", tmp_path / "nothing.onnx", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr, proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_module("nnlab", "demo", checkpoint("mnist-mlp"), "--port", port, check=False, timeout=120)
    assert proc.returncode == 1 and f"port {port}" in proc.stderr and "--port" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_module("nnlab", "demo", ROOT / "tests" / "fixtures" / "mlp-0.1.0.ckpt", "--port", "0", check=False)
    assert proc.returncode == 2 and "--port 0" in proc.stderr
