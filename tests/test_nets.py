"""Each network: output shape, and it can overfit one batch."""

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import nnlab.config  # noqa: F401
from nnlab.nets import NETS
from tests.helpers import ROOT

CASES = ["model=mlp", "model=cnn", "experiment=seed_mlp", "experiment=seed_cnn"]


def arch_of(override):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[override, "paths.output_dir=."])
    return cfg.model.net, dict(cfg.model.arch)


@pytest.mark.parametrize("override", CASES)
def test_output_shape(override):
    name, arch = arch_of(override)
    net = NETS[name](**arch)
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("override", CASES)
def test_overfits_one_batch(override):
    torch.manual_seed(0)
    name, arch = arch_of(override)
    net = NETS[name](**{**arch, "dropout": 0.0})
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    assert fit_one_batch(net, x, y, steps=150) < 0.05


def fit_one_batch(net, x, y, steps: int) -> float:
    """Adam on one batch; the last loss."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_cnn_that_shrinks_the_image_away_is_refused():
    with pytest.raises(ValueError, match="shrinks a 28px image"):
        NETS["cnn"](
            1,
            28,
            10,
            conv=[8, "M", 8, "M", 8, "M", 8, "M", 8, "M"],
            kernel_size=3,
            padding=0,
            batch_norm=False,
            hidden=[],
            dropout=0.0,
        )


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pooling", ["last", "max_mean"])
def test_lstm_matches_packed_sequences_and_a_bidirectional_lstm(pooling, bidirectional):
    torch.manual_seed(0)
    arch = dict(
        vocab_size=50,
        num_classes=2,
        embed_dim=8,
        hidden=6,
        layers=2,
        bidirectional=bidirectional,
        dropout=0.0,
        pooling=pooling,
    )
    net = NETS["lstm"](**arch).eval()
    packed = NETS["lstm"](**arch, packed=True).eval()
    packed.load_state_dict(net.state_dict())
    lengths = torch.tensor([9, 1, 5, 9, 3])
    tokens = torch.randint(2, 50, (5, 9)) * (torch.arange(9)[None] < lengths[:, None])
    assert torch.allclose(net(tokens, lengths), packed(tokens, lengths), atol=1e-5)
    # and the same gradients (the reversal's backward pass is the reversal)
    net(tokens, lengths).square().sum().backward()
    packed(tokens, lengths).square().sum().backward()
    for (name, mine), theirs in zip(net.named_parameters(), packed.parameters()):
        assert torch.allclose(mine.grad, theirs.grad, atol=1e-5), name

    # The same as torch's own (bidirectional, stacked) LSTM over packed sequences, given its weights.
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    ref = torch.nn.LSTM(8, 6, 2, batch_first=True, bidirectional=bidirectional)
    for name, value in ref.named_parameters():
        layer, direction = int(name.split("_l")[1][0]), int(name.endswith("_reverse"))
        value.data.copy_(getattr(net.rnns[layer][direction], name.split("_l")[0] + "_l0"))
    out, (h, _) = ref(pack_padded_sequence(net.embed(tokens), lengths, batch_first=True, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, batch_first=True)
    if pooling == "last":
        features = torch.cat(list(h[-(2 if bidirectional else 1) :]), dim=-1)
    else:
        valid = (torch.arange(9)[None] < lengths[:, None])[..., None]
        features = torch.cat(
            [out.masked_fill(~valid, float("-inf")).amax(1), (out * valid).sum(1) / lengths[:, None]], -1
        )
    assert torch.allclose(net.head(features), net(tokens, lengths), atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "max_mean"])
def test_lstm_shape_and_overfit_with_padding(pooling):
    torch.manual_seed(0)
    net = NETS["lstm"](
        vocab_size=50,
        num_classes=2,
        embed_dim=16,
        hidden=16,
        layers=1,
        bidirectional=True,
        dropout=0.0,
        pooling=pooling,
    )
    lengths = torch.randint(1, 12, (16,))
    tokens = torch.randint(2, 50, (16, 12)) * (torch.arange(12)[None] < lengths[:, None])  # 0 pads
    y = torch.randint(0, 2, (16,))
    assert net(tokens, lengths).shape == (16, 2)
    # Padding does not change a sequence's output.
    wider = torch.cat([tokens, torch.zeros(16, 5, dtype=torch.long)], 1)
    assert torch.allclose(net(wider, lengths), net(tokens, lengths), atol=1e-5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(net(tokens, lengths), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_word_dropout_drops_whole_words_in_training_only():
    torch.manual_seed(0)
    arch = dict(
        vocab_size=50,
        num_classes=2,
        embed_dim=8,
        hidden=6,
        layers=1,
        bidirectional=True,
        dropout=0.0,
        pooling="max_mean",
    )
    plain, dropping = NETS["lstm"](**arch), NETS["lstm"](**arch, word_dropout=0.5)
    dropping.load_state_dict(plain.state_dict())
    tokens, lengths = torch.randint(2, 50, (4, 7)), torch.full((4,), 7)
    assert torch.equal(dropping.eval()(tokens, lengths), plain.eval()(tokens, lengths))
    assert not torch.allclose(dropping.train()(tokens, lengths), plain.train()(tokens, lengths))


def test_word_and_feature_dropout_share_one_mask_with_the_expected_rates():
    """The LSTM's one mask: features dropped at `dropout`, whole words at `word_dropout`, the rest scaled so the
    expectation is kept (the rates rounded to 1/65536); 1.0 drops everything (as nn.Dropout), 0 and 0 leave the
    embeddings as they are. The embeddings are time-major: (T, B, E)."""
    arch = dict(vocab_size=50, num_classes=2, embed_dim=40, hidden=6, layers=1, bidirectional=True, pooling="last")
    torch.manual_seed(0)
    x = torch.ones(64, 50, 40)
    out = NETS["lstm"](**arch, dropout=0.3, word_dropout=0.2)._drop_words_and_features(x)
    assert (out == 0).float().mean().item() == pytest.approx(1 - 0.7 * 0.8, abs=0.01)
    assert (out == 0).all(-1).float().mean().item() == pytest.approx(0.2, abs=0.02)  # whole words
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / (0.7 * 0.8)], rel=1e-4)
    assert not NETS["lstm"](**arch, dropout=1.0)._drop_words_and_features(x).any()
    assert NETS["lstm"](**arch, dropout=0.0)._drop_words_and_features(x) is x


@pytest.mark.parametrize("override", ["model=speech_rnn", "experiment=seed_speech_rnn"])
def test_speech_rnn_shape_features_and_overfit(override):
    torch.manual_seed(0)
    name, arch = arch_of(override)
    net = NETS[name](**{**arch, "num_classes": 5, "dropout": 0.0, "spec_masks": 0})
    waves, y = torch.randn(16, 16000) * 0.1, torch.randint(0, 5, (16,))
    assert net(waves).shape == (16, 5)
    assert net.eval().features(waves).shape == (16, 40, 101)  # 40 log-mel bands, a frame every 10 ms
    assert fit_one_batch(net.train(), waves, y, steps=60) < 0.05


def test_spec_augment_masks_in_training_only():
    _, arch = arch_of("model=speech_rnn")
    net = NETS["speech_rnn"](**{**arch, "num_classes": 5, "dropout": 0.0})
    waves = torch.randn(4, 16000) * 0.1
    assert not torch.equal(net(waves), net(waves))  # training: random masks (the only randomness left)
    net.eval()
    assert torch.equal(net(waves), net(waves))
    without = NETS["speech_rnn"](**{**arch, "num_classes": 5, "dropout": 0.0, "spec_masks": 0})
    assert torch.equal(without(waves), without(waves))
    with pytest.raises(ValueError, match="model.arch.pooling='mean'"):
        NETS["speech_rnn"](**{**arch, "num_classes": 5, "pooling": "mean"})
