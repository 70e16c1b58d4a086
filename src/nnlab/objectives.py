"""What a training step minimises beyond the plain loss: the Classifier's `objective`, chosen in the config
(`objective=adversarial`, conf/objective/; `objective=none`: the plain loss) and recorded in checkpoints as primitives
({"name": ..., its settings}), built with `build(settings)`.

One so far, adversarial training on word embeddings, for any text network that lets its embeddings be perturbed (its
class says `perturbable = True`: nnlab.nets.LSTM does). An objective of your own is a class taking its settings as
keyword arguments, with `check(net, name)` and `step(module, x, y) -> (logits, loss)`, named by its import path
(`model.objective.name=mypackage.objectives.Mine`). Nothing here imports torch until a step runs: the settings are
checked before anything heavy is imported (nnlab.run.checks).
"""

import importlib

from nnlab.errors import ConfigError


class Adversarial:
    """Adversarial training on word embeddings (Miyato et al., 2017): each step adds the loss under the perturbation
    of the embeddings, of norm `norm`, that raises the loss most, to first order. A step costs about 1 + share clean
    steps.

    norm: the perturbation's norm for a text of `length` tokens; a text of L tokens gets norm * sqrt(L / length), the
        same strength per token (length None: this norm for every text, as Miyato et al.)
    share: the adversarial loss is taken on this share of each batch (texts drawn at random), an unbiased estimate of
        the loss on all of them."""

    def __init__(self, norm: float = 5.0, length: int | None = 256, share: float = 1.0):
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        if not (number(norm) and norm > 0):
            raise ConfigError(f"model.objective.norm={norm}: the perturbation's norm is above 0 (objective=none: off)")
        if not (number(share) and 0 < share <= 1):
            raise ConfigError(f"model.objective.share={share} is not a share in (0, 1]; 1 takes all")
        if length is not None and not (number(length) and length > 0):
            raise ConfigError(f"model.objective.length={length}: a number of tokens above 0, or null (one norm)")
        self.norm, self.length, self.share = norm, length, share

    def check(self, net, name: str):
        if not getattr(net, "perturbable", False):
            raise ConfigError(
                f"objective=adversarial perturbs word embeddings, which model.net={name!r} does not let it do (a text "
                "network that does says `perturbable = True`, as lstm does): choose objective=none"
            )

    def step(self, module, x, y):
        """The training step's logits and loss: the clean loss plus the loss under the perturbation."""
        import torch

        smoothing = module.hparams.label_smoothing
        logits, embedded = module.net(*x, return_embedding=True)
        loss = module.loss(logits, y, smoothing)
        # One backward pass through the clean loss gives both the direction and the clean loss's parameter gradients
        # (backpropagating the sum afterwards would pass through the clean graph a second time: a third of the step).
        # A GradScaler (16-mixed) scales what training_step returns; the clean pass is scaled alike against underflow.
        scaler = getattr(module.trainer.precision_plugin, "scaler", None) if module._trainer else None
        scale = scaler.get_scale() if scaler is not None else 1.0
        params = [p for p in module.parameters() if p.requires_grad]
        grad, *clean = torch.autograd.grad(loss * scale, [embedded, *params], allow_unused=True)
        tokens, lengths = x
        if self.share < 1:  # the texts drawn: the mean of their losses estimates the batch's without bias
            pick = torch.randperm(len(y), device=y.device)[: max(1, round(self.share * len(y)))]
            tokens, lengths, grad, y = tokens[pick], lengths[pick.to(lengths.device)], grad[pick], y[pick]
        perturbed = module.net(tokens, lengths, perturbation=self.perturbation(grad, lengths))
        adversarial = module.loss(perturbed, y, smoothing)
        # What training_step returns has the value loss + adversarial loss, and backpropagating it adds the clean
        # gradients to the adversarial loss's: through a term linear in the parameters whose value is 0. Lightning
        # (and DDP's gradient reduction) see one backward pass as usual, with accumulation and scaling applied to all.
        carried = sum((p * (g / scale if scale != 1 else g)).sum() for p, g in zip(params, clean) if g is not None)
        return logits, loss.detach() + adversarial + (carried - carried.detach())

    def perturbation(self, grad, lengths):
        """The gradient's direction, each text's scaled to its norm: `norm`, times sqrt(L / length) for a text of L
        tokens when length is set (a norm that grows with the text, the same per token)."""
        import torch

        size = grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        radius = torch.full_like(size, self.norm)
        if self.length:
            lengths = lengths.to(size.device, size.dtype)[:, None, None]
            radius = radius * (lengths / self.length).sqrt()
        return radius * grad / size


OBJECTIVES = {"adversarial": Adversarial}


def build(settings: dict | None):
    """The objective `settings` name ({"name": ..., keyword arguments}), or None for the plain loss."""
    if not settings:
        return None
    settings = dict(settings)
    name = settings.pop("name", None)
    found = OBJECTIVES.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str) and "." in name:
        module, _, attribute = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), attribute, None)
        except ImportError:
            found = None
    if not isinstance(found, type):
        raise ConfigError(
            f"model.objective.name={name!r} is not an objective: choose one of {sorted(OBJECTIVES)} (objective=...), "
            "give the import path of a class of your own, or objective=none"
        )
    try:
        return found(**settings)
    except TypeError as e:
        raise ConfigError(f"model.objective: {e} (objective={name})") from None
