"""The kinds of data: everything the core does differently for images, texts and audio, one module per kind.

A data module says what it provides (`kind = "image"`), a network what it reads (`reads = "image"`); the
Classifier, the Throughput and TestReport callbacks, `nnlab.predict` and `scripts/benchmark.py` ask the kind,
never the tensors' shapes or the model's name. A new kind is a subclass of Kind, registered by being defined:

    class TableKind(Kind):
        name = "table"

plus a data module with `kind = "table"` and a network with `reads = "table"` (tests/newkind/table.py is one; a
network of your own is named by its import path, `model.net=mypackage.nets.MyNet`).
"""

from nnlab.errors import ConfigError, UserError


class PredictError(UserError, ValueError):
    """An input predict cannot classify, or a checkpoint it cannot classify with."""


KINDS: dict[str, "Kind"] = {}


class Kind:
    """The defaults suit a batch (x, y) whose x is one tensor with a sample per row; a kind overrides what differs.

    name: what data modules provide and networks read. A network that reads "tensor" (the MLP: it flattens what it
        gets) reads every kind whose inputs are one tensor per sample (`one_tensor`): images, audio, a table's rows.
    takes_paths: predict's inputs are file paths (images, audio), not the texts themselves."""

    name: str = ""
    takes_paths: bool = True
    one_tensor: bool = True  # a batch's inputs are one tensor, a sample per row: a network reading "tensor" takes them

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            KINDS[cls.name] = cls()

    # --- training and evaluation
    def feed(self, net, x):
        """The network's output for a batch's inputs."""
        return net(x)

    def count(self, x) -> tuple[int, int]:
        """(samples, tokens) in a batch's inputs; tokens 0 where the kind has none."""
        return len(x), 0

    def keep(self, x, rows: list[int]) -> list:
        """The inputs of these rows of a batch, on the CPU, one per sample (kept for the test report)."""
        return list(x[rows].cpu()) if rows else []

    # --- the test report
    def show(self, samples: list, names: list[str], preprocessing: dict, out_dir) -> dict:
        """Write the test samples to `out_dir` in the kind's own form; return {W&B key: function(wandb) -> media}.

        samples: (input, label, probabilities, wrong), misclassified first, each group most confident first."""
        return {}

    # --- predict, and the model as exported (nnlab export): an input read with NumPy alone, then a preparation
    def raw(self, preprocessing: dict, item: str) -> tuple[list, list | None]:
        """One input (a file's path, or a text) as an exported model reads it, with NumPy alone (nnlab.inputs): (rows,
        one array per sample or window, each window's (start, end) in seconds or None); a PredictError saying why it
        cannot be read. A kind that defines raw, stack, preparation and describe is exported by nnlab export and
        read by predict on a checkpoint and on an export alike."""
        raise NotImplementedError

    def stack(self, rows: list):
        """Rows of raw() as one batch array: the exported model's input."""
        import numpy as np

        return np.stack(rows)

    def preparation(self, preprocessing: dict):
        """A torch module from a batch of stack() (as a tensor) to the network's input: what training did to the data
        after it was read (nnlab.served)."""
        raise NotImplementedError

    def describe(self, preprocessing: dict) -> dict:
        """The exported model's input for another program: name, dtype, shape (a name such as "batch" or "tokens" for
        a size that varies, a number for one that is fixed) and how an input is prepared."""
        raise NotImplementedError

    # --- how nnlab export traces the model: defaults read from describe(); a kind overrides what differs
    onnx_exporter = "dynamo"  # torch.onnx.export(dynamo=True); "torchscript" where dynamo cannot write the network

    def example(self, preprocessing: dict):
        """Two inputs of the exported form to trace and check the graph with (where a size varies within a batch,
        texts' lengths say, the two should differ, or an exporter may fix it): random values of describe()'s dtype
        and shape, its varying sizes 2 (integers 0-255, floats from a standard normal)."""
        import numpy as np

        rng = np.random.default_rng(0)
        described = self.describe(preprocessing)
        shape = [2 if isinstance(d, str) else d for d in described["shape"]]
        dtype = np.dtype(described["dtype"])
        if dtype.kind in "iu":
            return rng.integers(0, 256, shape, dtype=dtype)
        return rng.standard_normal(shape).astype(dtype)

    def varying(self, preprocessing: dict) -> dict[int, str]:
        """The input's axes whose size varies (their names in describe()'s shape): the graph's dynamic axes."""
        return {i: d for i, d in enumerate(self.describe(preprocessing)["shape"]) if isinstance(d, str)}

    def torch_program_input(self, x, preprocessing: dict):
        """The example as torch.export traces it, and the program's input shape for nnlab.json (its batch varies,
        the other sizes are the example's)."""
        return x, {"shape": ["batch", *x.shape[1:]]}

    @property
    def exportable(self) -> bool:
        return type(self).raw is not Kind.raw

    def missing_for_export(self) -> list[str]:
        """What nnlab export needs of a kind that this one does not define: raw, preparation, describe."""
        return [m for m in ("raw", "preparation", "describe") if getattr(type(self), m) is getattr(Kind, m)]

    def read(self, preprocessing: dict, path: str):
        """One input as the model reads it: (x holding one or more windows, each window's (start, end) in seconds or
        None), prepared as the training data was; a PredictError saying why it cannot be. A kind of one's own may
        define this instead of raw() and preparation() (it is then not exported)."""
        raise PredictError(f"predict does not read {self.name!r} inputs")

    def predict(self, model, preprocessing: dict, inputs: list[str], batch_size: int = 256) -> list:
        """For each input: (probabilities (windows, classes), window spans or None), or the PredictError saying
        why it cannot be classified; the others are still classified."""
        import torch

        if self.exportable:
            from nnlab.served import scorer

            return classify(self, preprocessing, inputs, scorer(model, preprocessing), batch_size)
        results = []
        for path in inputs:
            try:
                x, spans = self.read(preprocessing, path)
            except PredictError as e:
                results.append(e)
                continue
            probs = [model.probabilities(model(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
            results.append((torch.cat(probs), spans))
        return results

    def shown(self, text: str) -> str:
        """An input as predict prints it beside its classes (a file's path whole)."""
        return text


def classify(kind: Kind, preprocessing: dict, inputs: list[str], score, batch_size: int = 256) -> list:
    """For each input: (probabilities (rows, classes), spans), or the PredictError saying why it cannot be read.
    `score` gives a batch's probabilities from its array (stack() of up to `batch_size` rows of raw()): the checkpoint
    in PyTorch or the exported graph in ONNX Runtime, so both read every input the same way."""
    import numpy as np

    results, rows = [], []
    for item in inputs:
        try:
            these, spans = kind.raw(preprocessing, item)
        except PredictError as e:
            results.append(e)
            continue
        results.append((len(these), spans))
        rows += these
    scored = [np.asarray(score(kind.stack(rows[i : i + batch_size]))) for i in range(0, len(rows), batch_size)]
    probabilities = np.concatenate(scored) if scored else None
    start = 0
    for i, result in enumerate(results):
        if not isinstance(result, PredictError):
            n, spans = result
            results[i] = (probabilities[start : start + n], spans)
            start += n
    return results


class TensorKind(Kind):
    """What a network that reads "tensor" sees: one tensor per sample, of whichever kind the data is (the data's own
    kind shows its test samples and reads predict's inputs)."""

    name = "tensor"


def reads_from(reads: str, provides: str | None) -> bool:
    """Whether a network that reads `reads` takes the batches of a data module that provides `provides`."""
    if reads == provides:
        return True
    return reads == "tensor" and provides in KINDS and KINDS[provides].one_tensor


def import_kind(name: str | None, data_module: str):
    """Register kind `name` by importing the module of the data module that provides it (`data_module`, an import
    path: nnlab.examples.numeric_table.NumericTableDataModule), where it is not registered yet."""
    import importlib

    from nnlab.earlier import MOVED

    if name in KINDS or "." not in data_module:
        return
    data_module = MOVED.get(data_module, data_module)
    module = data_module.rsplit(".", 1)[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise PredictError(
            f"the data module {data_module} that provides {name!r} data cannot be imported here ({e}): install or "
            "put on PYTHONPATH the package that holds it"
        ) from None


def kind(name: str) -> Kind:
    """The registered kind of this name; a ConfigError naming the known ones otherwise."""
    if name not in KINDS:
        raise ConfigError(f"no kind of data is called {name!r}; the kinds are {', '.join(sorted(KINDS))}")
    return KINDS[name]


# Each module registers its kind.
import nnlab.kinds.audio  # noqa: E402
import nnlab.kinds.image  # noqa: E402
import nnlab.kinds.text  # noqa: E402, F401
