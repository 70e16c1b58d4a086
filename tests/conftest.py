import pytest

from tests.helpers import make_aclimdb, make_mnist, make_speech_commands


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
