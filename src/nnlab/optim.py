"""The optimizer and the learning-rate schedule of a model, chosen in the config groups optim/ and sched/ (placed at
model.optim and model.sched) and built from their `_target_`:

    python train.py optim=sgd model.optim.momentum=0.8 sched=cosine model.sched.anneal_to=0.1

model.lr is the one learning rate both read: the optimizer's, the peak of one-cycle, the start of cosine.

Checkpoints written before these groups recorded the optimizer and schedule by name: nnlab.earlier reads them as
the groups they meant. No torch at import: a resumed command is checked against its run before torch loads.
"""

from nnlab.errors import ConfigError


def scheduled(sched) -> bool:
    """Whether model.sched names a schedule: sched=none leaves no `_target_` there, though a model config's
    warmup_pct may still sit in it."""
    return bool(sched) and bool(sched.get("_target_"))


def built(what: str, spec: dict, *args, **kwargs):
    """The class `spec` names by its `_target_`, made with `args`, `kwargs` and the rest of `spec` as its settings;
    a setting it does not take is a ConfigError naming model.<what> and its class."""
    from hydra.utils import get_class

    settings = {**{k: v for k, v in spec.items() if k != "_target_"}, **kwargs}
    try:
        return get_class(spec["_target_"])(*args, **settings)
    except TypeError as e:
        raise ConfigError(
            f"model.{what} ({spec['_target_']}): {e}; conf/{what}/ shows the settings each takes"
        ) from None


def build_optimizer(module, lr: float, optim: dict):
    """The optimizer of `module`'s parameters from model.optim: its `_target_` with its settings, at learning rate
    `lr`; weight decay on weights only (biases and normalisation parameters take none); PyTorch's fused kernels
    (`fused: true`; AdamW over the LSTM: 73 ms a step on a CPU with the default foreach, 8.5 ms fused) where every
    parameter is on a CPU or a CUDA GPU, which they need."""
    params = list(module.parameters())
    spec = {k: v for k, v in optim.items() if k != "weight_decay"}
    if spec.get("fused") and not all(p.device.type in ("cpu", "cuda") for p in params):
        del spec["fused"]  # fused kernels exist for CPU and CUDA parameters only (elsewhere: torch's default)
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": optim.get("weight_decay", 0.0)},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return built("optim", spec, groups, lr=lr)


def build_schedule(sched: dict | None):
    """The schedule model.sched describes (nnlab.schedules), or None for a constant learning rate."""
    return built("sched", sched) if scheduled(sched) else None
