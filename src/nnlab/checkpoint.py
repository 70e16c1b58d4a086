"""Reading checkpoints safely (torch alone: no Lightning), and the random state that makes a resumed run repeat an
uninterrupted one (saved and restored by nnlab.run.callbacks.RandomState)."""

import random
import warnings
from pathlib import Path

import numpy as np
import torch

from nnlab.errors import CheckpointError

# What train.py's checkpoints hold: enough to test or predict with, and (RESUME) to continue training.
MODEL_KEYS = ("state_dict", "hyper_parameters")
RESUME_KEYS = (*MODEL_KEYS, "epoch", "global_step", "loops", "optimizer_states")


def read_checkpoint(path, keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """torch.load(path, weights_only=True) onto the CPU, or a CheckpointError that names the file and what is wrong
    with it: missing, empty, cut short, not a torch file, holding objects other than tensors and primitives (this
    project never writes those; loading them would run code), or lacking `keys`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; runs keep theirs in <run dir>/checkpoints/")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a .ckpt file in it")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it is damaged")
    try:
        with warnings.catch_warnings():
            # A damaged file that starts like a pickle makes torch warn about the protocol number it read before the
            # error below says what is wrong: one line, not torch's warning about its unpickler too.
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many kinds here; the message below is what matters
        text = str(e)
        if "Unsupported global" in text:  # a pickle of arbitrary objects: never retried without weights_only
            raise CheckpointError(
                f"{path} is not a checkpoint of this project: it holds Python objects other than "
                "tensors and primitives, which nnlab never writes (loading it would run its code)"
            ) from None
        # torch's own first line, unless it is its advice to load without weights_only (never safe here)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        first = lines[0] if lines else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a torch file ({type(e).__name__}: {first[:100]})"
        ) from None
    if not isinstance(checkpoint, dict) or (missing := [k for k in keys if k not in checkpoint]):
        held = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint of this project's train.py: it lacks "
            f"{missing if isinstance(checkpoint, dict) else list(keys)} (it holds {held})"
        )
    return checkpoint


def model_from_checkpoint(checkpoint: dict, path):
    """The Classifier a checkpoint of read_checkpoint holds (eval mode), or a CheckpointError naming the file when
    its hyperparameters or weights are not this project's Classifier's (another project's Lightning checkpoint)."""
    from nnlab.module import Classifier

    try:
        model = Classifier(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, KeyError, RuntimeError, ValueError) as e:
        reason = str(e).splitlines()[0][:160]
        raise CheckpointError(
            f"{path} is not a checkpoint of this project's models ({type(e).__name__}: {reason})"
        ) from None
    model.on_load_checkpoint(checkpoint)
    return model.eval()


def check_fits(model, checkpoint: dict, path):
    """A checkpoint to continue or fine-tune from (as read_checkpoint gave it) must hold weights of the configured
    network: say so before fit (Lightning would fail inside with a key dump)."""
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        reason = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{path} does not hold weights of this model (model.net={model.hparams.net}): {reason}"
        ) from None


def rng_state() -> dict:
    """This process's generators as tensors and primitives (loadable with weights_only=True)."""
    bit_generator, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "bit_generator": bit_generator,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
    }


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def data_classes(datamodule) -> list[str] | None:
    """The class names a data module gives, before its data is set up (None where it cannot say)."""
    if hasattr(datamodule, "class_names_found"):
        return [str(c) for c in datamodule.class_names_found()]
    names = getattr(datamodule, "class_names", None)
    return [str(c) for c in names] if names is not None else None


def input_shape(datamodule) -> dict:
    """What a data module's inputs are, in the terms of a checkpoint's preprocessing record: channels and size of an
    image, sample rate and samples of a clip."""
    hp = getattr(datamodule, "hparams", {})
    shape = {k: hp[k] for k in ("channels", "image_size", "sample_rate") if k in hp}
    if hasattr(datamodule, "samples"):
        shape["samples"] = datamodule.samples
    return shape


def describe_shape(shape: dict) -> str:
    if "channels" in shape or "image_size" in shape:
        side = shape.get("image_size", "?")
        return f"{shape.get('channels', '?')}-channel {side}x{side} images"
    if "sample_rate" in shape:
        return f"clips of {shape.get('samples', '?')} samples at {shape['sample_rate']} Hz"
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def classes_text(names: list) -> str:
    shown = ", ".join(map(str, names[:6])) + (", ..." if len(names) > 6 else "")
    return f"{len(names)} classes ({shown})"


def check_fits_data(checkpoint: dict, path, datamodule, data: str):
    """A checkpoint tested on data (train=false) must read that data's inputs and classify its classes: channels and
    size of images, sample rate and length of clips, the number and the names of the classes, in order. Otherwise a
    CheckpointError in one line names both sides (the test would crash at its first batch, or score the wrong
    classes). A text checkpoint reads the texts with its own vocabulary (the data module's `vocabulary`), so its token
    ids mean what they meant in training."""
    recorded = checkpoint.get("preprocessing") or {}
    arch = checkpoint["hyper_parameters"].get("arch", {})
    trained = {k: recorded[k] for k in ("channels", "image_size", "sample_rate", "samples") if k in recorded}
    if not trained:  # written before checkpoints recorded their preprocessing
        trained = {k: arch[a] for k, a in (("channels", "in_channels"), ("image_size", "image_size")) if a in arch}
    given = input_shape(datamodule)
    if differ := [k for k in trained if k in given and trained[k] != given[k]]:
        keys = " ".join(f"data.{k}={trained[k]}" for k in differ if k != "samples")
        raise CheckpointError(
            f"checkpoint {path} reads {describe_shape(trained)}; data={data} gives {describe_shape(given)}"
            + (f": test it with {keys}" if keys else ": test it on clips of its length")
        )
    names = data_classes(datamodule)
    if names is None:
        return
    outputs = max(int(arch.get("num_classes", len(names))), 2)
    known = [str(c) for c in recorded.get("class_names") or []]
    if len(names) != outputs or (known and known != names):
        mine = classes_text(known) if known else f"{outputs} classes"
        raise CheckpointError(
            f"checkpoint {path} classifies {mine}; data={data} holds {classes_text(names)}: test it on data of the "
            "same classes, in the same order"
        )
