"""A web page to try a model: draw or upload an image, type a review, upload or record a clip, and see its classes.

    nnlab demo EXPORT                 (a folder of nnlab export, or its model.onnx: ONNX Runtime, no torch)
    nnlab demo CHECKPOINT             (a checkpoint of train.py: needs nnlab[train])
    nnlab demo MODEL --port 8000      (default 7860; --host 0.0.0.0 serves the other machines of your network too)

The page (Gradio: pip install "nnlab[demo]") is served on 127.0.0.1 only, unless --host says otherwise. It reads each
input as `nnlab predict` does (nnlab.kinds) and shows the most probable classes as a bar chart, and an image as the
network reads it. An input that cannot be classified gets a message in the page; the server keeps serving.
"""

import argparse
import os
import sys
import traceback
from pathlib import Path

from nnlab.errors import UserError
from nnlab.kinds import PredictError, kind

CANVAS = 280  # the drawing's side in pixels: 10 pixels of the canvas to one of an MNIST digit
SHOWN = 224  # the side an input is drawn at "as the network reads it" (whole pixels of the network's input)
MAX_UPLOAD = "100mb"  # Gradio refuses a larger file in the page, saying so


class Demo:
    """A model (checkpoint or export) and what the page needs of it; each method gives a page's outputs."""

    def __init__(self, path, top: int | None):
        from nnlab.predict import opened

        self.path = Path(path)
        self.preprocessing, self.score, _ = opened(path)
        self.kind = kind(self.preprocessing.get("kind"))
        if self.score is None or self.kind.name not in ("image", "text", "audio"):
            raise PredictError(
                f"{path} classifies {self.kind.name!r} inputs; nnlab demo makes pages for image, text and audio "
                "models (nnlab predict reads the others)"
            )
        self.names = list(self.preprocessing.get("class_names") or [])
        self.top = top or 5  # the chart shows fewer where the model has fewer classes

    # --- each input: the page's outputs (probabilities by class name, [the image as read,] a message)
    def classified(self, rows: list):
        """Rows of the kind's raw() -> their probabilities (rows, classes)."""
        return self.score(self.kind.stack(rows))

    def raw(self, path: str, name: str):
        """The kind's raw() of an uploaded file, its errors naming the file as the user named it (not Gradio's copy)."""
        try:
            return self.kind.raw(self.preprocessing, path)
        except PredictError as e:
            raise PredictError(str(e).replace(str(path), name)) from None

    def class_name(self, c: int) -> str:
        return self.names[c] if self.names else str(c)

    def labels(self, p) -> dict[str, float]:
        return {self.class_name(c): float(p[c]) for c in range(len(p))}

    def text(self, text: str | None):
        if not text or not text.strip():
            return None, "**Nothing to classify**: type or paste a text, then press Classify."
        rows, _ = self.kind.raw(self.preprocessing, text)
        (p,) = self.classified(rows)
        return self.labels(p), ""

    def audio(self, path: str | None):
        if not path:
            return None, "**No clip**: upload an audio file (WAV, FLAC, OGG, MP3) or record one, then press Classify."
        name = Path(path).name
        rows, spans = self.raw(path, name)
        p = self.classified(rows)
        best = int(p.max(1).argmax())
        if len(rows) == 1:
            return self.labels(p[best]), ""
        windows = ", ".join(f"{s:.1f}-{e:.1f} s: {self.class_name(int(q.argmax()))}" for (s, e), q in zip(spans, p))
        start, end = spans[best]
        return self.labels(p[best]), (
            f"{name} is longer than the model's clip: read in {len(rows)} windows ({windows}); "
            f"shown is the most confident, {start:.1f}-{end:.1f} s."
        )

    def image(self, payload: dict | None):
        """The upload as Gradio sends it (preprocess=False: Gradio's own reading would fail on a file that is not an
        image, or one too large to decode safely, before nnlab could say so)."""
        path, name = (payload or {}).get("path"), (payload or {}).get("orig_name")
        if not path:
            return None, None, "**No image**: upload one (PNG, JPEG, BMP, ...), then press Classify."
        name = name or Path(path).name
        rows, _ = self.raw(path, name)
        (p,) = self.classified(rows)
        return self.labels(p), self.seen(rows[0]), self.read_as(name, path)

    def drawing(self, value: dict | None):
        """The sketchpad's strokes on the training images' background (dark for MNIST: white digits on black)."""
        import numpy as np
        from PIL import Image

        from nnlab.inputs import image_pixels

        layers = [layer for layer in ((value or {}).get("layers") or []) if layer is not None]
        ink = [np.asarray(layer) for layer in layers]
        if not any(layer.ndim == 3 and layer.shape[-1] == 4 and layer[..., 3].any() for layer in ink):
            return None, None, f"**The drawing is empty**: draw {self.what_to_draw()}, then press Classify."
        canvas = Image.new("RGBA", (ink[0].shape[1], ink[0].shape[0]), self.background() + (255,))
        for layer in ink:
            canvas = Image.alpha_composite(canvas, Image.fromarray(layer.astype(np.uint8), "RGBA"))
        c, size = self.preprocessing["channels"], self.preprocessing["image_size"]
        pixels, _, _ = image_pixels(canvas, c, size, self.preprocessing.get("fit", "stretch"))
        (p,) = self.classified([pixels])
        return self.labels(p), self.seen(pixels), ""

    # --- images
    def dark(self) -> bool:
        """Whether the training images are mostly dark (MNIST: white digits on black), by their mean."""
        mean = self.preprocessing.get("mean") or [0.5]
        return sum(mean) / len(mean) < 0.5

    def background(self) -> tuple:
        return (0, 0, 0) if self.dark() else (255, 255, 255)

    def ink(self) -> str:
        return "#ffffff" if self.dark() else "#000000"

    def what_to_draw(self) -> str:
        names = self.names[:10]
        return f"one of {', '.join(names)}{', ...' if len(self.names) > 10 else ''}" if names else "something"

    def seen(self, pixels):
        """(channels, size, size) uint8 pixels, enlarged with whole pixels for the page."""
        import numpy as np

        scale = max(1, SHOWN // pixels.shape[-1])
        big = pixels.repeat(scale, 1).repeat(scale, 2)
        return np.ascontiguousarray(big[0] if big.shape[0] == 1 else big.transpose(1, 2, 0))

    def read_as(self, name: str, path: str) -> str:
        from PIL import Image

        c, size = self.preprocessing["channels"], self.preprocessing["image_size"]
        try:
            with Image.open(path) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001  read once already; the size is only said
            return ""
        if (width, height) == (size, size):
            return ""
        return f"{name} is {width}x{height} pixels: read as {size}x{size} {'grey' if c == 1 else 'RGB'}."

    def network_reads(self) -> str:
        if self.kind.name == "image":
            c, size = self.preprocessing["channels"], self.preprocessing["image_size"]
            mean = ", ".join(f"{m:.4g}" for m in self.preprocessing["mean"])
            std = ", ".join(f"{s:.4g}" for s in self.preprocessing["std"])
            return (
                f"{size}x{size} {'grey' if c == 1 else 'RGB'} pixels, scaled to 0-1 and normalised with the training "
                f"images' mean ({mean}) and standard deviation ({std})"
            )
        if self.kind.name == "audio":
            rate, n = self.preprocessing["sample_rate"], self.preprocessing["samples"]
            return f"{n / rate:g} s of mono sound at {rate} Hz (a longer clip in windows of that length)"
        limit = self.preprocessing.get("max_length")
        return "a text's tokens" + (f" (at most {limit}: a longer text's head and tail)" if limit else "")


def guarded(function, outputs: int):
    """`function` for Gradio: an input it cannot classify gives the page a message, never a stack trace; the
    traceback of anything unforeseen goes to the terminal and the server keeps serving."""

    def run(*args):
        try:
            return function(*args)
        except PredictError as e:
            message = f"**Cannot classify this input**: {e}"
        except Exception as e:  # noqa: BLE001  the page says what failed; the terminal has the traceback
            traceback.print_exc()
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            what = f"{type(e).__name__}: {first}" if first else type(e).__name__
            message = f"**Something went wrong** ({what}); try another input."
        return (None,) * (outputs - 1) + (message,)

    return run


def page(demo: Demo):
    import gradio as gr
    import numpy as np

    names = demo.names
    with gr.Blocks(title="nnlab demo", analytics_enabled=False) as blocks:
        what = {"image": "images", "text": "texts", "audio": "audio clips"}[demo.kind.name]
        gr.Markdown(
            f"# nnlab demo\n`{demo.path}` classifies {what} into {len(names)} classes"
            + (f": {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}" if names else "")
            + f".  \nThe network reads {demo.network_reads()}."
        )
        with gr.Row():
            with gr.Column():
                if demo.kind.name == "image":
                    with gr.Tab("Draw", elem_id="draw-tab"):
                        gr.Markdown(
                            f"Draw {demo.what_to_draw()} in the middle of the square, about two thirds of its height "
                            "(as the training images were drawn)."
                        )
                        background = np.full((CANVAS, CANVAS, 3), demo.background(), dtype=np.uint8)
                        sketch = gr.Sketchpad(
                            value={"background": background, "layers": [], "composite": background},
                            canvas_size=(CANVAS, CANVAS),
                            fixed_canvas=True,
                            brush=gr.Brush(default_size=22, colors=[demo.ink()], color_mode="fixed")
                            if demo.preprocessing["channels"] == 1
                            else gr.Brush(default_size=22),
                            layers=False,
                            transforms=(),
                            type="numpy",
                            label="Your drawing",
                            elem_id="drawing",
                        )
                        draw_button = gr.Button("Classify the drawing", variant="primary", elem_id="classify-drawing")
                    with gr.Tab("Upload", elem_id="upload-tab"):
                        upload = gr.Image(
                            type="filepath", image_mode=None, sources=["upload", "clipboard"], label="An image",
                            elem_id="image",
                        )  # fmt: skip
                        upload_button = gr.Button("Classify the image", variant="primary", elem_id="classify-image")
                elif demo.kind.name == "text":
                    text = gr.Textbox(lines=8, label="A text", placeholder="Type or paste a text", elem_id="text")
                    text_button = gr.Button("Classify", variant="primary", elem_id="classify-text")
                else:
                    clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="A clip", elem_id="audio")
                    clip_button = gr.Button("Classify", variant="primary", elem_id="classify-audio")
            with gr.Column():
                label = gr.Label(num_top_classes=demo.top, label="Most probable classes", elem_id="classes")
                if demo.kind.name == "image":
                    seen = gr.Image(
                        label="As the network reads it", format="png", interactive=False, elem_id="seen", height=SHOWN
                    )
                message = gr.Markdown(elem_id="message")
        if demo.kind.name == "image":
            outputs = [label, seen, message]
            draw_button.click(guarded(demo.drawing, 3), sketch, outputs, api_name="drawing")
            upload_button.click(guarded(demo.image, 3), upload, outputs, api_name="image", preprocess=False)
        elif demo.kind.name == "text":
            text_button.click(guarded(demo.text, 2), text, [label, message], api_name="text")
        else:
            clip_button.click(guarded(demo.audio, 2), clip, [label, message], api_name="audio")
    return blocks


def main(argv=None, prog: str = "python -m nnlab.demo"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an export (the folder nnlab export wrote, or its model.onnx) or a checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                        "machine only; 0.0.0.0 serves every network this machine is on)")  # fmt: skip
    parser.add_argument("--port", type=int, default=7860, help="the port (default 7860)")
    parser.add_argument("--top", type=int, default=None, help="how many classes the chart shows (default 5)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: give a port from 1 to 65535")
    if args.top is not None and args.top < 1:
        parser.error(f"--top {args.top}: give how many classes to show, 1 or more")
    # Gradio sends usage statistics and asks for its newest version unless told not to; the page's own requests to
    # this machine must not go through a proxy.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    local = "127.0.0.1,localhost,::1"
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(filter(None, [os.environ.get(name), local]))
    try:
        demo = Demo(args.model, args.top)
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise UserError("nnlab demo needs Gradio: pip install 'nnlab[demo]'") from None
        blocks = page(demo)
    except UserError as e:
        sys.exit(f"error: {e}")
    try:
        blocks.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            ssr_mode=False,
            mcp_server=False,
            show_error=False,
            quiet=True,
            max_file_size=MAX_UPLOAD,
            prevent_thread_lock=True,
            footer_links=[],
        )
    except OSError as e:
        if "port" in str(e).lower():
            sys.exit(f"error: port {args.port} on {args.host} is in use or not allowed; give another with --port")
        sys.exit(f"error: cannot serve on {args.host}:{args.port} ({e}); give another --host or --port")
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"nnlab demo: {args.model} on http://{shown}:{blocks.server_port}/  (Ctrl-C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: other machines that reach this one can use the page", flush=True)
    try:
        blocks.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        blocks.close()


if __name__ == "__main__":
    main()
