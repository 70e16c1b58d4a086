"""Export a checkpoint for use without nnlab's training code: an ONNX graph (model.onnx, for ONNX Runtime and the
tools that read ONNX) and a torch.export program (model.pt2, for PyTorch serving), each with nnlab.json beside it.

    nnlab export CHECKPOINT                       (ONNX, into <run dir>/export/)
    nnlab export CHECKPOINT --format torch --out DIR
    nnlab export CHECKPOINT --format onnx,torch

Both take the input as its kind of data reads it (uint8 pixels, token ids padded with 0, samples as floats; nnlab.json
says how to prepare one) and compute every step that is tensor math (normalisation, each text's length, log-mel
features); they give class probabilities and logits, for any batch size (and any text length). The ONNX graph is
checked against the checkpoint in PyTorch before it is kept. Everything is written into a temporary folder beside
--out and renamed into place when complete: an export cut short leaves no half-written folder.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

from nnlab.errors import UserError

FORMATS = ("onnx", "torch")
OPSET = 18
TOLERANCE = 1e-4  # the largest difference in a logit between the ONNX graph in ONNX Runtime and PyTorch


class ExportError(UserError, RuntimeError):
    """A checkpoint that cannot be exported, or a place an export cannot be written; the message names it."""


def formats(value: str) -> list[str]:
    chosen = [f.strip() for f in value.split(",") if f.strip()]
    if not chosen or any(f not in FORMATS for f in chosen):
        raise argparse.ArgumentTypeError(f"{value!r}: give onnx, torch or onnx,torch")
    return list(dict.fromkeys(chosen))


def default_out(checkpoint: Path) -> Path:
    """<run dir>/export for a checkpoint in a run's checkpoints/ folder, else <checkpoint name>-export beside it."""
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "run.json").is_file():
        return checkpoint.parent.parent / "export"
    return checkpoint.with_name(f"{checkpoint.stem}-export")


def check_out(out: Path):
    """--out must be a new or empty folder, or an earlier export (replaced whole); its parent must be writable."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder (new, empty, or an earlier export)")
    if out.is_dir() and any(out.iterdir()) and not (out / "nnlab.json").is_file():
        raise ExportError(f"--out {out} holds other files; give a new or empty folder, or an earlier export")
    parent = out.absolute().parent
    if (file := next((p for p in parent.parents[::-1] + (parent,) if p.exists() and not p.is_dir()), None)) is not None:
        raise ExportError(f"--out {out}: {file} is a file, not a folder; give a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out {out} cannot be made ({e.strerror}): give a folder you can write") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--out {out} cannot be written (no permission to write in {parent}): give another folder")


def load(path: Path):
    """The checkpoint's model (eval, CPU), the checkpoint and its preprocessing; an ExportError where its kind of
    data has no exported form."""
    from nnlab.kinds import kind
    from nnlab.predict import read

    model, preprocessing, checkpoint = read(path)
    reader = kind(preprocessing["kind"])
    if missing := reader.missing_for_export():
        raise ExportError(
            f"{path} reads {reader.name!r} data, whose kind does not define {', '.join(f'{m}()' for m in missing)}, "
            "which nnlab export needs (docs/export.md, Kinds of data of your own)"
        )
    return model, checkpoint, preprocessing


# Which ONNX exporter writes a kind's graph is the kind's (Kind.onnx_exporter): PyTorch's dynamo-based exporter
# (torch.onnx.export(dynamo=True), the default of torch 2.11) where it works, the TorchScript-based one for texts.
WHY = {
    "dynamo": "PyTorch's dynamo-based exporter (torch.onnx.export(dynamo=True))",
    "torchscript": (
        "the TorchScript-based exporter (torch.onnx.export(dynamo=False)): torch 2.11's dynamo exporter fixes a "
        "recurrent network's loop to the example's length (pytorch/pytorch#191855)"
    ),
}


def write_onnx(served, reader, x, path: Path, preprocessing: dict) -> str:
    """The ONNX graph of `served` at `path`, its input named and its varying axes as the kind describes them; which
    exporter wrote it."""
    import torch

    from nnlab.served import for_export

    graph = for_export(served)
    exporter, name, axes = reader.onnx_exporter, reader.describe(preprocessing)["name"], reader.varying(preprocessing)
    kwargs = dict(input_names=[name], output_names=["probabilities", "logits"], opset_version=OPSET)
    if exporter == "dynamo":
        shapes = ({i: torch.export.Dim(a, min=1) for i, a in axes.items()},)
        program = torch.onnx.export(
            graph, (x,), dynamo=True, dynamic_shapes=shapes, external_data=False, verbose=False, **kwargs
        )
        program.save(str(path), external_data=False)
    else:
        both = {name: axes, "probabilities": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(graph, (x,), str(path), dynamo=False, dynamic_axes=both, **kwargs)
    return exporter


def write_torch(served, reader, x, path: Path, preprocessing: dict) -> dict:
    """The torch.export program of `served` at `path`, for any batch size; what its input must be (the kind's
    torch_program_input: a text model's reads texts padded to its longest)."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    x, shape = reader.torch_program_input(x, preprocessing)
    program = torch.export.export(served, (x,), dynamic_shapes=({0: batch},))  # the other sizes as given
    torch.export.save(program, str(path))
    return shape


def check_onnx(served, path: Path, x, name: str) -> float:
    """The largest difference in a logit between ONNX Runtime on the graph and PyTorch on the checkpoint, for the
    example inputs and for each of them alone (batch 1)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (x, x[:1], x[1:]):
        if batch.ndim == 2 and batch.dtype == np.int64:  # a text alone: without the others' padding
            batch = batch[:, : max(1, int((batch != 0).sum(1).max()))]
        with torch.inference_mode():
            expected = served(torch.from_numpy(batch))[1].numpy()
        got = session.run(["logits"], {name: batch})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def run_record(checkpoint_path: Path, checkpoint: dict) -> dict:
    """What the checkpoint's run recorded, where the checkpoint sits in that run's checkpoints/ folder: its commit
    and its test metrics."""
    run = checkpoint_path.parent.parent
    found = {}
    for name in ("run.json", "metrics.json"):
        try:
            found[name] = json.loads((run / name).read_text())
        except (OSError, ValueError):
            found[name] = None
    record = found["run.json"] or {}
    if record.get("run_id") != (checkpoint.get("nnlab") or {}).get("run_id"):
        return {"git": None, "test_metrics": None}
    metrics = {k: v for k, v in (found["metrics.json"] or {}).items() if k.startswith("test/")}
    return {"git": record.get("git"), "test_metrics": metrics or None}


def data_fingerprint(trained_on) -> dict | None:
    """The training split a checkpoint recorded (one fingerprint per sample) as its size and one digest of them."""
    if trained_on is None:
        return None
    values = trained_on.numpy().astype("<i8")
    return {"training_samples": len(values), "sha256": hashlib.sha256(values.tobytes()).hexdigest()}


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export(checkpoint_path, out=None, chosen=("onnx",)) -> Path:
    """Write the export of a checkpoint into `out` (see the module's text); the folder written."""
    from importlib.metadata import version

    import torch

    from nnlab.kinds import kind
    from nnlab.served import Served

    checkpoint_path = Path(checkpoint_path)
    out = Path(out) if out is not None else default_out(checkpoint_path)
    check_out(out)
    model, checkpoint, preprocessing = load(checkpoint_path)
    reader = kind(preprocessing["kind"])
    description = reader.describe(preprocessing)
    x = reader.example(preprocessing)
    staging = out.absolute().parent / f".{out.name}.partial{os.getpid()}"
    clear_stale(out)
    try:
        staging.mkdir()
    except OSError as e:
        raise ExportError(f"--out {out} cannot be written ({e.strerror}): give a folder you can write") from None
    try:
        files, onnx_record, torch_record = {}, None, None
        served = Served(model, preprocessing).eval()
        if "onnx" in chosen:
            try:
                exporter = write_onnx(served, reader, torch.from_numpy(x), staging / "model.onnx", preprocessing)
            except Exception as e:
                raise ExportError(
                    f"{checkpoint_path}: its network (model.net={model.hparams.net}) cannot be exported to ONNX "
                    f"({first_line(e)}); --format torch may still work"
                ) from e
            difference = check_onnx(served, staging / "model.onnx", x, description["name"])
            if difference > TOLERANCE:
                raise ExportError(
                    f"{checkpoint_path}: the ONNX graph's logits differ from the checkpoint's by {difference:.2g} "
                    f"(more than {TOLERANCE:g}) on the example inputs; it was not kept"
                )
            files["onnx"] = "model.onnx"
            onnx_record = {"opset": OPSET, "exporter": exporter, "why": WHY[exporter],
                           "max_logit_difference": difference}  # fmt: skip
        if "torch" in chosen:
            try:
                torch_input = write_torch(served, reader, torch.from_numpy(x), staging / "model.pt2", preprocessing)
            except Exception as e:
                raise ExportError(
                    f"{checkpoint_path}: its network (model.net={model.hparams.net}) cannot be exported with "
                    f"torch.export ({first_line(e)})"
                ) from e
            files["torch"] = "model.pt2"
            torch_record = {"input": torch_input}
        kept = {k: v for k, v in preprocessing.items() if k != "tokenizer"}
        if "tokenizer" in preprocessing:
            (staging / "tokenizer.json").write_text(preprocessing["tokenizer"])
            kept["tokenizer"] = "tokenizer.json"
        record = checkpoint.get("nnlab") or {}
        manifest = {
            "format": "nnlab export 1",
            "kind": reader.name,
            "data_module": (record.get("data") or {}).get("_target_"),  # a kind of one's own is defined beside it
            "classes": preprocessing.get("class_names"),
            "input": description,
            "outputs": {
                "probabilities": "float32 (batch, classes): each class's probability",
                "logits": "float32 (batch, classes); (batch, 1) for two classes: the second class's logit",
            },
            "files": files,
            "onnx": onnx_record,
            "torch": torch_record,
            "preprocessing": kept,
            "model": {
                "net": model.hparams.net,
                "choices": record.get("choices"),
                "run_id": record.get("run_id"),
                "checkpoint": str(checkpoint_path.resolve()),
                "checkpoint_sha256": sha256(checkpoint_path),
            },
            "data_fingerprint": data_fingerprint(record.get("trained_on")),
            **run_record(checkpoint_path, checkpoint),
            "nnlab_version": version("nnlab"),
            "torch_version": torch.__version__,
        }
        (staging / "nnlab.json").write_text(json.dumps(manifest, indent=2) + "\n")
        replace(staging, out)
    except OSError as e:  # a full disk, a folder taken away meanwhile: nothing half-written is kept
        raise ExportError(f"--out {out}: the export could not be written ({e.strerror or e}); nothing was kept") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def clear_stale(out: Path):
    """Remove what an export into `out` that was killed left beside it (.<name>.partial<pid>, .<name>.old<pid> of a
    process that is gone)."""
    for left in out.absolute().parent.glob(f".{out.name}.*"):
        rest = left.name[len(out.name) + 2 :]  # partial<pid> or old<pid>
        stem = rest.rstrip("0123456789")
        pid = rest[len(stem) :]
        if stem in ("partial", "old") and pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def replace(staging: Path, out: Path):
    """Rename the complete export into place; an earlier export there (or an empty folder) is replaced whole."""
    old = None
    if out.exists():
        old = out.absolute().parent / f".{out.name}.old{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def first_line(e: BaseException) -> str:
    """The first line of what went wrong at the root of `e` (an exporter wraps the error that says why), without the
    terminal colours some of them print."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:200]}"


def main(argv=None, prog: str = "python -m nnlab.export"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by nnlab train (<run dir>/checkpoints/best.ckpt)")
    parser.add_argument("--format", type=formats, default=["onnx"], help="onnx (the default), torch, or onnx,torch")
    parser.add_argument("--out", type=Path, help="the folder to write (default: <run dir>/export)")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # the exporters' advice on their own internals, not the user's to act on
            warnings.simplefilter("ignore")
            out = export(args.checkpoint, args.out, args.format)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: no export was written (an earlier one in --out is as it was)")
    written = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.checkpoint} to {out}/ ({written})")


if __name__ == "__main__":
    main()
