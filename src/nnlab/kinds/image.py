"""Images: (B, C, H, W) float tensors, normalised per channel; shown un-normalised in their own channels."""

import math
import sys
from pathlib import Path

from nnlab.atomic import atomic_open
from nnlab.kinds import Kind, PredictError

GRID = 64  # misclassified test images drawn in misclassified.png


def unnormalise(x, preprocessing: dict):
    """(C, H, W) normalised -> (H, W, C) in [0, 1], with the channel means and deviations the data was scaled by."""
    import torch

    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(preprocessing["std"], dtype=torch.float32)[:, None, None]
    return (x.float() * std + mean).clamp(0, 1).permute(1, 2, 0)


class ImageKind(Kind):
    name = "image"

    def show(self, samples, names, preprocessing, out_dir):
        mistakes = [s for s in samples if s[3]][:GRID]
        if not mistakes:
            return {}
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch

        # One picture of all the tiles, in one set of axes: 64 axes of their own took seconds to lay out and save.
        cols = 8
        rows = math.ceil(len(mistakes) / cols)
        tiles = [unnormalise(img, preprocessing) for img, _, _, _ in mistakes]
        h, w, c = tiles[0].shape
        gap = max(2, h // 7)  # the room for each tile's caption, and between tiles
        sheet = torch.ones(rows * (h + 2 * gap), cols * (w + gap), c)
        for i, pixels in enumerate(tiles):
            top, left = (i // cols) * (h + 2 * gap) + 2 * gap, (i % cols) * (w + gap)
            sheet[top : top + h, left : left + w] = pixels
        fig, ax = plt.subplots(figsize=(cols * 1.2, rows * 1.4 + 0.4))
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.4 / (rows * 1.4 + 0.4))
        ax.set_axis_off()
        if c == 1:
            ax.imshow(sheet.squeeze(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(sheet, interpolation="nearest")
        for i, (_, t, p, _) in enumerate(mistakes):
            x, y = (i % cols) * (w + gap) + w / 2, (i // cols) * (h + 2 * gap) + 1.8 * gap
            ax.text(x, y, f"{names[t]}→{names[int(p.argmax())]} {p.max():.2f}", fontsize=7, ha="center", va="bottom")
        fig.suptitle("misclassified test images: true→predicted, confidence", fontsize=9)
        path = Path(out_dir) / "misclassified.png"
        with atomic_open(path) as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
        return {"test/misclassified": lambda wandb: wandb.Image(str(path))}

    def raw(self, preprocessing, path):
        """The image as (channels, size, size) uint8 pixels: grey (L) or RGB, transparency onto white, resized with
        bilinear filtering (fit=stretch both sides; fit=crop the shorter side, then the middle)."""
        import warnings

        from PIL import Image

        from nnlab.inputs import is_file, load_image

        if not is_file(path):
            raise PredictError(f"{path} is not a file; give the paths of image files (PNG, JPEG, BMP, ...)")
        size, fit = preprocessing["image_size"], preprocessing.get("fit", "stretch")
        with warnings.catch_warnings():  # a huge image: said below in one line, not in PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pixels, problem, _, _, huge = load_image(path, preprocessing["channels"], size, fit)
        if problem:
            raise PredictError(f"{path} is {problem}: it cannot be classified")
        if huge:
            print(f"note: {path} is {huge[0]}x{huge[1]} pixels; it was shrunk to {size}x{size} as the model reads it",
                  file=sys.stderr)  # fmt: skip
        return [pixels], None

    def preparation(self, preprocessing):
        from nnlab.served import Normalise

        return Normalise(preprocessing["mean"], preprocessing["std"])

    def describe(self, preprocessing):
        c, size = preprocessing["channels"], preprocessing["image_size"]
        fit = preprocessing.get("fit", "stretch")
        return {
            "name": "pixels",
            "dtype": "uint8",
            "shape": ["batch", c, size, size],
            "prepare": (
                f"decode the image, convert it to {'grey (PIL mode L)' if c == 1 else 'RGB'} with transparent pixels "
                f"on white, resize it to {size}x{size} with bilinear filtering "
                + ("(the shorter side to the size, then the middle)" if fit == "crop" else "(both sides)")
                + "; channels first, values 0-255 (the graph normalises them)"
            ),
            "channels": c,
            "image_size": size,
            "fit": fit,
        }
