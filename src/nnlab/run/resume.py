"""resume=true: the command must train what the run in its directory trained (its model, data, seed and the length its
schedule spans)."""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nnlab import commands, earlier
from nnlab import optim as optimization
from nnlab.commands import shell_command
from nnlab.errors import CheckpointError, ConfigError

log = logging.getLogger("nnlab")


# Keys that may differ when a run is resumed: where things are, not what is trained.
RESUMABLE_DIFFERENCES = (
    "data.data_dir", "data.cache_dir", "data.download", "data.workers", "data.eval_batch_size", "model.compile",
)  # fmt: skip


# What sets the number of training steps, over which a learning-rate schedule runs.
SCHEDULE_LENGTH = ("max_epochs", "max_steps", "max_time", "limit_train_batches", "accumulate_grad_batches")


def differences(recorded, now, prefix="") -> list[str]:
    """`key: recorded -> now` for every leaf that differs; a value still unknown now (None) is not a difference."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            d
            for k in sorted(set(recorded) | set(now), key=str)
            for d in differences(recorded.get(k), now.get(k), f"{prefix}{k}.")
        ]
    key = prefix.rstrip(".")
    if now is None or recorded == now or key in RESUMABLE_DIFFERENCES:
        return []
    return [f"{key}: {recorded!r} in the run, {now!r} now"]


def check_same_run(out: Path, cfg: DictConfig):
    """A resumed command must train what the run in `out` trained: its model, its data, its seed."""
    record = out / "config.yaml"
    if not record.is_file():
        return
    try:
        recorded = OmegaConf.to_container(OmegaConf.load(record), resolve=False)
        assert isinstance(recorded, dict)
    except Exception as e:  # noqa: BLE001  hand-edited, cut short: the check cannot be made, the run can still go on
        log.warning(f"cannot read {record} ({type(e).__name__}): this command is not checked against the run's")
        return
    if isinstance(recorded.get("model"), dict):  # older runs recorded the objective, optimizer and schedule by name
        recorded["model"] = earlier.model_settings(recorded["model"])
    budget = recorded.get("budget")
    if isinstance(budget, dict) and "exact" not in budget:  # recorded before budget.exact: by the callback it set
        budget["exact"] = ((recorded.get("callbacks") or {}).get("training_budget") or {}).get("exact")
    now = OmegaConf.to_container(cfg, resolve=True)
    for model in (recorded.get("model"), now["model"]):
        if isinstance(model, dict) and not optimization.scheduled(model.get("sched")):
            model["sched"] = None  # sched=none, whatever settings a model config left there
    diff = [d for key in ("model", "data", "seed") for d in differences({key: recorded.get(key)}, {key: now.get(key)})]
    if now["model"]["sched"]:  # the schedule spans the steps the run was started with
        trainer = {k: recorded.get("trainer", {}).get(k) for k in SCHEDULE_LENGTH}
        diff += differences({"trainer": trainer}, {"trainer": {k: now["trainer"].get(k) for k in SCHEDULE_LENGTH}})
        diff += differences({"budget": recorded.get("budget")}, {"budget": now.get("budget")})
    diff.sort(key=lambda d: d.split(":")[0].count("."))  # model.net before model.arch.conv
    if diff:
        original = out / ".hydra" / "overrides.yaml"
        overrides = commands.line(OmegaConf.load(original)) if original.is_file() else "(not recorded)"
        raise ConfigError(
            f"resume=true: this command does not train what the run in {out} trained ("
            f"{'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''}). Resume it with its own "
            f"overrides ({overrides}), or leave out resume=true and hydra.run.dir for a new run"
        )


def resume_from(cfg: DictConfig, resuming: bool, out: Path, last_ckpt: Path) -> tuple[str | None, dict | None]:
    """The checkpoint fit starts from, and its content (read once, checked): last.ckpt when resuming (or
    ckpt_path, when given with resume=true); else ckpt_path (fine-tuning from its weights and state)."""
    from nnlab.checkpoint import RESUME_KEYS, read_checkpoint

    if not resuming:
        return (cfg.ckpt_path, read_checkpoint(cfg.ckpt_path, RESUME_KEYS)) if cfg.ckpt_path else (None, None)
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():  # asked for by name: it must be there
        raise CheckpointError(f"resume=true ckpt_path={cfg.ckpt_path}: that checkpoint does not exist")
    chosen = Path(cfg.ckpt_path) if cfg.ckpt_path else last_ckpt
    if not chosen.is_file():
        log.warning(
            f"{'resume=true' if cfg.resume else 'restarted'} but {chosen} does not exist: starting from "
            f"scratch in {out}"
        )
        return None, None
    try:
        return str(chosen), read_checkpoint(chosen, RESUME_KEYS)
    except CheckpointError as e:
        raise CheckpointError(f"{e}. {alternative(chosen, last_ckpt)}") from None


def alternative(damaged: Path, last_ckpt: Path) -> str:
    """What to resume from instead of a damaged checkpoint."""
    from nnlab.checkpoint import RESUME_KEYS, read_checkpoint

    best = last_ckpt.parent / "best.ckpt"
    if best != damaged and best.is_file():
        try:
            state = read_checkpoint(best, RESUME_KEYS)
            return (
                f"best.ckpt (after epoch {state['epoch'] + 1}, step {state['global_step']}) is intact: "
                f"continue from it with {shell_command([commands.override('ckpt_path', best)], ('ckpt_path=',))}"
            )
        except CheckpointError:
            pass
    return (
        f"No intact checkpoint is left in {damaged.parent}: start again in a new directory (leave out "
        "resume=true and hydra.run.dir)"
    )
