import os
import signal
from pathlib import Path

import pytest

# pytest-xdist runs the tests in several workers at once (pyproject.toml: `-n auto`, a worker per core): each worker and
# every process it starts gets one thread, as torchrun gives each of several processes on a machine. Two-thread torch
# processes on the same cores spin against each other and run many times slower. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

from tests.helpers import (
    TINY,
    TINY_SPEECH,
    TINY_TEXT,
    make_aclimdb,
    make_image_folder,
    make_mnist,
    make_speech_commands,
    make_text_table,
    train,
)

# A SLURM client without a configuration asks DNS for its controller: every process of the test session has one.
# Outside the tests' cluster (the `slurm` fixture) it names a file that does not exist, so a client fails at once.
os.environ["SLURM_CONF"] = "/nonexistent/nnlab-tests/slurm.conf"


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per core and one more, at most 8. Many tests wait (on SLURM's scheduler, on a sweep's trial,
    on a run slowed to be signalled mid-epoch), so one worker per core leaves cores idle."""
    return min(len(os.sched_getaffinity(0)) + 1, 8)


UNGROUPED = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """`--dist loadgroup` keeps the tests of one xdist_group on one worker: the SLURM tests share one cluster. A worker
    marks such a test by a suffix on its id, which pytest 9.2 no longer takes (pytest-xdist#1386): the SLURM tests then
    ran on every worker, each worker started a cluster of its own, and their jobs, numbered from 1 in every cluster,
    took the same rendezvous ports (Lightning's 15000 + the job id). Such a test fails at its start, saying so, instead
    of at random."""
    if os.environ.get("PYTEST_XDIST_WORKER") and config.getoption("loadgroup", False):
        for item in items:
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
                item.stash[UNGROUPED] = (
                    "--dist loadgroup did not keep this test's xdist_group on one worker: this pytest and pytest-xdist "
                    "do not work together (pytest-xdist#1386); install the versions uv.lock pins (uv sync)"
                )


def pytest_runtest_setup(item):
    if UNGROUPED in item.stash:
        pytest.fail(item.stash[UNGROUPED], pytrace=False)


@pytest.fixture(autouse=True)
def ctrl_c_as_a_user_has_it():
    """Every test starts with Python's own Ctrl-C handler: Lightning sets SIGINT to ignored for good after a
    KeyboardInterrupt in a fit run inside the test process, and every process a later test starts would inherit that
    (a sweep then never hears its Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A tiny MNIST written in the real IDX format, shared by the tests that only read it."""
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def imdb_dir(tmp_path_factory):
    """A tiny aclImdb tree in the official layout."""
    root = tmp_path_factory.mktemp("imdb")
    make_aclimdb(root, per_class=20)
    return root


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory):
    """A tiny Speech Commands tree in the v0.02 layout (5 words, noise, one stereo and one corrupt file)."""
    return make_speech_commands(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real SLURM cluster of two nodes, n1 and n2 (tests/slurm_cluster.py), for the session; the environment that
    reaches it.

    Skipped, with the reason, where SLURM cannot be started; .ci/run sets NNLAB_REQUIRE_SLURM=1, which turns
    that skip into a failure."""
    from tests import slurm_cluster

    why = None
    if slurm_cluster.missing_binaries():
        why = f"SLURM is not installed ({', '.join(slurm_cluster.missing_binaries())}): {slurm_cluster.INSTALL}"
    elif os.geteuid() != 0:
        why = "starting munged and slurmd by hand needs root"
    if why:
        if os.environ.get("NNLAB_REQUIRE_SLURM"):
            pytest.fail(f"NNLAB_REQUIRE_SLURM is set but {why}")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    conf = slurm_cluster.start(root, nodes=2)
    yield {"SLURM_CONF": str(conf)}
    slurm_cluster.stop(root)


ONE_EPOCH = ["trainer.max_epochs=1", "trainer.limit_train_batches=8", "logger=csv"]


def recipes(mnist_dir, imdb_dir, speech_dir, data: Path) -> dict:
    """name -> the overrides that train it (its data made in `data` where it is not a shared fixture)."""
    return {
        "mnist-mlp": ["model=mlp", f"paths.data_dir={mnist_dir}", *TINY],
        "mnist-cnn": ["model=cnn", f"paths.data_dir={mnist_dir}", *TINY],
        "images-cnn": [
            "model=cnn",
            "data=image_folder",
            f"data.path={data / 'images'}",
            "data.image_size=20",
            "data.channels=3",
            f"paths.data_dir={data}",
        ],
        "imdb-lstm": [
            "model=lstm",
            f"paths.data_dir={imdb_dir}",
            *TINY_TEXT,
            "model.arch.embed_dim=16",
            "model.arch.hidden=16",
            "data.eval_max_length=128",
        ],
        "table-gru": [
            "model=gru",
            "data=text_table",
            f"data.path={data / 'table.csv'}",
            "data.vocab_size=200",
            "data.min_frequency=1",
            "data.eval_max_length=128",
            f"paths.data_dir={data}",
        ],
        "speech-rnn": ["model=speech_rnn", f"paths.data_dir={speech_dir}", *TINY_SPEECH],
        "audio-8k": [
            "model=speech_rnn",
            f"paths.data_dir={data / 'audio'}",
            *TINY_SPEECH,
            "data.sample_rate=8000",
            "data.clip_seconds=0.5",
        ],
    }


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, mnist_dir, imdb_dir, speech_dir):
    """checkpoint(name): the best checkpoint of a one-epoch run of that recipe, trained on first use (the tests of
    nnlab export and nnlab demo: one xdist_group, so one worker trains each once)."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    make_image_folder(data / "images", per_class=12)
    make_text_table(data / "table.csv", rows=60)
    make_speech_commands(data / "audio", speakers=4, takes=2, rate=8000)
    made, overrides = {}, recipes(mnist_dir, imdb_dir, speech_dir, data)

    def get(name: str) -> Path:
        if name not in made:
            run = root / name
            train(*overrides[name], *ONE_EPOCH, f"hydra.run.dir={run}")
            made[name] = run / "checkpoints" / "best.ckpt"
        return made[name]

    return get


@pytest.fixture(scope="session")
def exported(checkpoint, tmp_path_factory):
    """exported(name): the ONNX export of checkpoint(name), written on first use by nnlab export's own function in
    this process (tests/test_export.py runs the command itself): for the tests that use an export, not make one."""
    import warnings

    root = tmp_path_factory.mktemp("exported")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            from nnlab.export import export

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                made[name] = export(checkpoint(name), root / name)
        return made[name]

    return get
