"""Model settings as earlier versions of nnlab recorded them, in a checkpoint's hyperparameters or a run's
config.yaml, read in today's form, so that those checkpoints evaluate, predict and resume as they did:

- nnlab 0.1.0's adversarial training (adversarial, adversarial_length, adversarial_share) as the objective it meant;
- a class by the import path it had before it moved (MOVED: the worked examples, now nnlab.examples);
- the optimizer and schedule recorded by name before the groups optim/ and sched/ existed (optimizer: adamw,
  weight_decay, momentum, scheduler: onecycle, warmup_pct, anneal_to) as the groups' settings they meant.

No torch at import: a resumed command is checked against its run before torch loads.
"""

from nnlab.errors import ConfigError

# Classes that moved, by the import path a checkpoint or config.yaml recorded (the worked examples, top-level
# `examples` in a clone until the package shipped them as nnlab.examples).
MOVED = {
    "examples.gru.GRU": "nnlab.examples.gru.GRU",
    "examples.numeric_table.NumericTableDataModule": "nnlab.examples.numeric_table.NumericTableDataModule",
}

OBJECTIVE_KEYS = ("adversarial", "adversarial_length", "adversarial_share")
OPTIM_KEYS = ("optimizer", "weight_decay", "momentum", "scheduler", "warmup_pct", "anneal_to")
KEYS = (*OBJECTIVE_KEYS, *OPTIM_KEYS)
OPTIMIZERS = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW"}
SCHEDULES = {"onecycle": "nnlab.schedules.OneCycle", "cosine": "nnlab.schedules.Cosine"}


def model_settings(recorded: dict) -> dict:
    """A model's settings as any version recorded them, in today's form (settings in today's form unchanged; the
    earlier keys are gone from the result)."""
    model = dict(recorded)
    if model.get("net") in MOVED:
        model["net"] = MOVED[model["net"]]
    norm, length, share = (model.pop(k, d) for k, d in zip(OBJECTIVE_KEYS, (0.0, None, 1.0), strict=True))
    if norm and not model.get("objective"):
        model["objective"] = {"name": "adversarial", "norm": norm, "length": length, "share": share}
    named = {k: model.pop(k) for k in OPTIM_KEYS if k in model}
    if model.get("optim") is None:  # recorded before optim/ and sched/: the optimizer and schedule it named
        model["optim"], model["sched"] = optimizer_and_schedule(**named)
    return model


def optimizer_and_schedule(optimizer="adamw", weight_decay=0.0, momentum=0.9, scheduler="none", warmup_pct=0.2,
                           anneal_to=0.0) -> tuple[dict, dict | None]:  # fmt: skip
    """model.optim and model.sched for an optimizer and a schedule recorded by name (defaults: those versions')."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"model.optimizer={optimizer}: one of {', '.join(OPTIMIZERS)} (now optim={optimizer})")
    if scheduler not in (*SCHEDULES, "none"):
        raise ConfigError(f"model.scheduler={scheduler}: one of {', '.join(SCHEDULES)}, none (now sched={scheduler})")
    optim = {"_target_": OPTIMIZERS[optimizer], "weight_decay": weight_decay, "fused": True}
    if optimizer == "sgd":
        optim["momentum"] = momentum
    if scheduler == "none":
        return optim, None
    return optim, {"_target_": SCHEDULES[scheduler], "warmup_pct": warmup_pct, "anneal_to": anneal_to}
