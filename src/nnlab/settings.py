"""Checks of a model's settings that need no torch: lifecycle runs them before anything heavy is imported (a refused
setting is answered at once), and the model again when it is built."""

from nnlab.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "onecycle")


def check_model_settings(
    optimizer: str,
    lr: float,
    weight_decay: float,
    scheduler: str,
    warmup_pct: float,
    arch: dict,
    label_smoothing: float = 0.0,
    anneal_to: float = 0.0,
):
    """The optimisation settings and dropout rates, checked when the model is built (before any data is read),
    naming the key: an unknown name or a rate out of range would fail deep inside torch, or silently train badly."""
    for key, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("scheduler", scheduler, SCHEDULERS)):
        if value not in allowed:
            raise ConfigError(f"model.{key}={value!r} is not one of {', '.join(allowed)}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"model.lr={lr}: the learning rate must be a positive number")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ConfigError(f"model.weight_decay={weight_decay}: weight decay must be 0 or more")
    if scheduler == "onecycle" and not 0 < warmup_pct < 1:
        raise ConfigError(f"model.warmup_pct={warmup_pct}: the warm-up share of one-cycle must be between 0 and 1")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ConfigError(f"model.label_smoothing={label_smoothing}: the share of smoothing is at least 0 and below 1")
    for key in ("dropout", "word_dropout"):
        if key in arch and not 0 <= arch[key] < 1:
            raise ConfigError(f"model.arch.{key}={arch[key]}: a dropout rate is at least 0 and below 1")
    if not (isinstance(anneal_to, (int, float)) and 0 <= anneal_to < 1):
        raise ConfigError(f"model.anneal_to={anneal_to}: the schedule ends at a share of model.lr in [0, 1)")
