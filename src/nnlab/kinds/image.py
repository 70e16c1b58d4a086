"""Images: (B, C, H, W) float tensors, normalised per channel; shown un-normalised in their own channels."""

import math
from pathlib import Path

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

        cols = 8
        rows = math.ceil(len(mistakes) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.4), squeeze=False)
        for ax in axes.flat:
            ax.set_axis_off()
        for ax, (img, t, p, _) in zip(axes.flat, mistakes):
            pixels = unnormalise(img, preprocessing)
            if pixels.shape[-1] == 1:
                ax.imshow(pixels.squeeze(-1), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(pixels)
            ax.set_title(f"{names[t]}→{names[int(p.argmax())]} {p.max():.2f}", fontsize=7)
        fig.suptitle("misclassified test images: true→predicted, confidence", fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / "misclassified.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return {"test/misclassified": lambda wandb: wandb.Image(str(path))}

    def read(self, preprocessing, path):
        import torch

        from nnlab.data.images import load_image

        if not Path(path).is_file():
            raise PredictError(f"{path} is not a file; give the paths of image files (PNG, JPEG, BMP, ...)")
        pixels, problem, _, _ = load_image(
            path, preprocessing["channels"], preprocessing["image_size"], preprocessing.get("fit", "stretch")
        )
        if problem:
            raise PredictError(f"{path} is {problem}: it cannot be classified")
        mean = torch.tensor(preprocessing["mean"])[:, None, None]
        std = torch.tensor(preprocessing["std"])[:, None, None]
        return ((pixels.float() / 255 - mean) / std)[None], None
