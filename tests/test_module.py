"""The Classifier: every optimizer and schedule the config offers trains; bad names are refused."""

import itertools
import sys

import lightning as L
import pytest
import torch

from nnlab.module import Classifier
from nnlab.objectives import Adversarial
from tests.helpers import datamodule

ARCH = dict(in_channels=1, image_size=28, num_classes=10, hidden=[32], batch_norm=True, dropout=0.1)


def classifier(optimizer="adamw", scheduler="onecycle", **settings):
    return Classifier(
        net="mlp",
        arch=ARCH,
        optimizer=optimizer,
        lr=1e-3,
        weight_decay=1e-4,
        momentum=0.9,
        scheduler=scheduler,
        warmup_pct=0.2,
        **settings,
    )


def quiet_trainer(tmp_path, **settings) -> L.Trainer:
    """A Trainer that writes nothing but what the test asks for."""
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **settings,
    )


@pytest.mark.parametrize(
    "optimizer,scheduler", list(itertools.product(["sgd", "adam", "adamw"], ["none", "cosine", "onecycle"]))
)
def test_every_optimizer_and_schedule_trains(optimizer, scheduler, mnist_dir, tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    model = classifier(optimizer, scheduler)
    trainer.fit(model, datamodule=datamodule(mnist_dir))
    assert trainer.global_step == 6 and 0.0 <= model.val_acc_best <= 1.0


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_a_schedule_ends_at_the_share_of_the_learning_rate_asked_for(scheduler, mnist_dir, tmp_path):
    class LastRate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rate = trainer.optimizers[0].param_groups[0]["lr"]

    def last_rate(**settings):
        rate = LastRate()
        trainer = quiet_trainer(tmp_path, max_steps=20, limit_val_batches=0, callbacks=[rate])
        trainer.fit(classifier(scheduler=scheduler, **settings), datamodule=datamodule(mnist_dir))
        return rate.rate  # the rate of the last step

    assert last_rate(anneal_to=0.3) == pytest.approx(0.3e-3, rel=0.02)  # lr 1e-3; the last of 20 steps
    assert last_rate() < 0.02e-3  # 0: all the way down, as before
    for bad in (1.0, -0.1, "end"):
        with pytest.raises(
            ValueError, match=rf"model.sched.anneal_to={bad}: the share of model.lr the schedule ends at, at least 0"
        ):
            classifier(anneal_to=bad)


@pytest.mark.parametrize("field,value", [("optimizer", "rmsprop"), ("scheduler", "step")])
def test_unknown_optimizer_or_schedule_is_named(field, value, mnist_dir, tmp_path):
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=f"model.{field}={value}: one of "):
        trainer.fit(classifier(**{field: value}), datamodule=datamodule(mnist_dir))


def lstm_classifier(arch: dict | None = None, **settings):
    """A small bidirectional LSTM classifier (one layer, 8 units, no dropout), changed by `arch` and `settings`."""
    base = dict(
        vocab_size=60,
        num_classes=2,
        embed_dim=8,
        hidden=8,
        layers=1,
        bidirectional=True,
        dropout=0.0,
        pooling="max_mean",
    )
    defaults = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.0, scheduler="none", warmup_pct=0.0)
    return Classifier(**{"net": "lstm", "arch": {**base, **(arch or {})}, **defaults, **settings})


def adversarial(norm: float = 5.0, length: int | None = None, share: float = 1.0) -> dict:
    return {"name": "adversarial", "norm": norm, "length": length, "share": share}


def test_adversarial_training_adds_the_loss_under_the_worst_perturbation():
    torch.manual_seed(0)
    model = lstm_classifier(objective=adversarial(1.0))
    tokens, lengths = torch.randint(2, 50, (4, 7)), torch.tensor([7, 5, 3, 1])
    tokens[torch.arange(7)[None, :] >= lengths[:, None]] = 0
    y = torch.tensor([0, 1, 0, 1])
    logits, loss = model.objective.step(model, (tokens, lengths), y)
    clean = model.loss(logits, y)
    assert loss > 2 * clean  # clean loss plus a larger loss under the perturbation


def test_an_objective_a_network_cannot_serve_is_named():
    settings = dict(optimizer="adam", lr=1e-3, weight_decay=0.0, momentum=0.0, scheduler="none", warmup_pct=0.0)
    with pytest.raises(ValueError, match="objective=adversarial perturbs word embeddings, which model.net='mlp'"):
        Classifier(net="mlp", arch=ARCH, objective=adversarial(1.0), **settings)
    with pytest.raises(ValueError, match="model.objective.name='sharpness' is not an objective"):
        Classifier(net="mlp", arch=ARCH, objective={"name": "sharpness"}, **settings)
    with pytest.raises(ValueError, match="model.objective: .*unexpected keyword argument 'radius'"):
        lstm_classifier(objective={"name": "adversarial", "radius": 1.0})


def test_the_classifier_knows_no_network_and_reads_0_1_0_settings_as_their_objective():
    """Adversarial training is an objective any perturbable text network takes; the keys nnlab 0.1.0 recorded
    (adversarial, adversarial_length, adversarial_share) mean the same objective and are not recorded again."""
    old = lstm_classifier(adversarial=5.0, adversarial_length=256, adversarial_share=0.5)
    assert old.hparams.objective == adversarial(5.0, 256, 0.5)
    assert not {"adversarial", "adversarial_length", "adversarial_share"} & set(old.hparams)
    assert lstm_classifier(adversarial=0.0).objective is None and lstm_classifier().hparams.objective is None
    assert not [name for name in vars(Classifier) if "adversarial" in name or "perturbation" in name]


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_the_adversarial_step_equals_its_formula_with_one_backward_pass_of_the_clean_loss(share):
    """The step reuses the clean pass's parameter gradients instead of backpropagating the summed losses through the
    clean graph again; the value and every gradient equal the formula's, computed by hand with the same random draws
    (dropout masks; with share=0.5 the half of the texts that takes the adversarial loss)."""
    torch.manual_seed(0)
    arch = dict(embed_dim=16, layers=2, dropout=0.3, word_dropout=0.2)
    model = lstm_classifier(arch, objective=adversarial(5.0, 256, share))
    tokens, lengths, y = torch.randint(2, 60, (6, 12)), torch.tensor([12, 9, 7, 5, 3, 1]), torch.randint(0, 2, (6,))
    torch.manual_seed(1)
    _, loss = model.objective.step(model, (tokens, lengths), y)
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(1)
    logits, embedded = model.net(tokens, lengths, return_embedding=True)
    clean = model.loss(logits, y)
    (grad,) = torch.autograd.grad(clean, embedded, retain_graph=True)
    pick = torch.randperm(6)[:3] if share < 1 else torch.arange(6)
    perturbation = model.objective.perturbation(grad[pick], lengths[pick])
    by_hand = clean + model.loss(model.net(tokens[pick], lengths[pick], perturbation=perturbation), y[pick])
    by_hand.backward()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    for mine, p in zip(ours, model.parameters()):
        assert torch.allclose(mine, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("share", [0.0, 1.5, "half"])
def test_an_adversarial_share_outside_0_to_1_is_named(share):
    with pytest.raises(ValueError, match=f"model.objective.share={share} is not a share in \\(0, 1\\]"):
        lstm_classifier(objective=adversarial(5.0, share=share))


def test_the_adversarial_norm_follows_the_text_length():
    grad, lengths = torch.randn(3, 16, 8), torch.tensor([16, 4, 1])
    per_text = Adversarial(2.0, None).perturbation(grad, lengths).flatten(1).norm(dim=1)
    assert torch.allclose(per_text, torch.full((3,), 2.0))  # Miyato et al.: one norm whatever the length
    scaled = Adversarial(2.0, 4).perturbation(grad, lengths).flatten(1).norm(dim=1)
    assert torch.allclose(scaled, torch.tensor([4.0, 2.0, 1.0]))  # 2 * sqrt(L / 4): the same per token


def test_training_budget_follows_the_data_and_an_explicit_length_is_exact(mnist_dir, tmp_path):
    from nnlab.callbacks import TrainingBudget

    def fit(budget, **trainer):
        t = L.Trainer(
            **{"max_epochs": 2, **trainer},
            callbacks=[budget],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            limit_val_batches=1,
        )
        t.fit(classifier(scheduler="none"), datamodule=datamodule(mnist_dir, val_size=500, batch_size=200))
        return t

    t = fit(TrainingBudget(min_steps=9))  # 100 training images, one batch an epoch: 9 epochs, not 2
    assert (t.max_epochs, t.global_step, t.check_val_every_n_epoch) == (9, 9, 4)  # validated about twice
    assert fit(TrainingBudget(min_steps=9, exact=True)).max_epochs == 2
    assert fit(TrainingBudget(min_steps=9), limit_train_batches=1).max_epochs == 2
    assert fit(TrainingBudget(min_steps=0)).max_epochs == 2


def test_unknown_network_is_named():
    with pytest.raises(ValueError, match="model.net='rnn' is not a network"):
        lstm_classifier(net="rnn")


def test_one_output_is_a_binary_classifier():
    model = lstm_classifier(dict(num_classes=1, bidirectional=False, pooling="last"))
    logits = torch.tensor([[0.0], [2.0], [-3.0]])
    y = torch.tensor([1, 1, 0])
    assert torch.allclose(model.probabilities(logits).sum(-1), torch.ones(3))
    assert model.probabilities(logits)[1, 1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits.squeeze(-1)), y.float())
    assert model.loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)


def test_keep_freed_memory_applies_on_linux():
    from nnlab.memory import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")
