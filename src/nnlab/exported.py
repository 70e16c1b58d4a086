"""An export of nnlab export, used with ONNX Runtime and no torch: its nnlab.json says what the input is, its kind of
data (nnlab.kinds) reads each input as the checkpoint would, and the graph gives the probabilities.

Needs only nnlab's own dependencies and ONNX Runtime: `pip install "nnlab[runtime]"`."""

import json
from pathlib import Path

from nnlab.kinds import PredictError, import_kind


def is_export(path) -> bool:
    """Whether `path` names an export (a .onnx file, or a folder holding nnlab.json) rather than a checkpoint."""
    path = Path(path)
    return path.suffix == ".onnx" or (path.is_dir() and (path / "nnlab.json").is_file())


class Export:
    """An export's manifest (nnlab.json), preprocessing record and ONNX Runtime session."""

    def __init__(self, path):
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if not path.exists():
            raise PredictError(f"{path} does not exist; give a folder written by nnlab export, or its model.onnx")
        try:
            self.manifest = json.loads((folder / "nnlab.json").read_text())
        except FileNotFoundError:
            raise PredictError(
                f"{path}: no nnlab.json beside it, which says how to read an input; give a folder written by nnlab "
                "export, or export the checkpoint again"
            ) from None
        except (OSError, ValueError) as e:
            raise PredictError(f"{folder / 'nnlab.json'} is damaged ({e}); export the checkpoint again") from None
        onnx = path if path.suffix == ".onnx" else folder / ((self.manifest.get("files") or {}).get("onnx") or "")
        if not onnx.is_file():
            raise PredictError(
                f"{folder} holds no ONNX graph (exported with --format torch?): export with --format onnx"
            )
        import_kind(self.manifest.get("kind"), self.manifest.get("data_module") or "")  # a kind of one's own
        self.preprocessing = dict(self.manifest["preprocessing"])
        if isinstance(self.preprocessing.get("tokenizer"), str):
            try:
                self.preprocessing["tokenizer"] = (folder / self.preprocessing["tokenizer"]).read_text()
            except OSError as e:
                raise PredictError(
                    f"{folder}: its tokenizer cannot be read ({e}); export the checkpoint again"
                ) from None
        try:
            import onnxruntime as ort
        except ImportError:
            raise PredictError(
                "predicting with an exported model needs ONNX Runtime: pip install 'nnlab[runtime]'"
            ) from None
        try:
            self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  ONNX Runtime's errors have no common class
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise PredictError(
                f"{onnx} is damaged or not an ONNX graph ({first}); export the checkpoint again"
            ) from None
        self.input = self.manifest["input"]["name"]

    def probabilities(self, batch):
        """A batch (stacked by the kind) -> (batch, classes) probabilities."""
        return self.session.run(["probabilities"], {self.input: batch})[0]
