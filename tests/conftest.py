import pytest

from tests.helpers import make_aclimdb, make_mnist


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
