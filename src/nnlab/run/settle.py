"""What a run computes once after Hydra composes its config, before anything is built (Run.settled): the one step
after composition (nnlab.run.command is the one before it). The run id a resumed run keeps, the sizes a data set
finds (its classes, a table's features: data settings left null), a sweep trial's W&B tags, the settings a checkpoint
records for the model and data it evaluates, and regularisation off for trainer.overfit_batches. config.yaml records
the result: what ran."""

import copy
import logging

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from nnlab import commands, earlier
from nnlab.run.checks import check_pairing

log = logging.getLogger("nnlab")


def without_regularisation(cfg: DictConfig) -> list[str]:
    """For trainer.overfit_batches: turn off in `cfg` what keeps a network from learning its batches by heart (the
    augmentation the data module and the network list in their `augmentation_off`; every dropout rate of the network;
    the training objective: adversarial training). Returns what it changed, as overrides."""
    import yaml
    from hydra.utils import get_class

    from nnlab.nets import network

    changes = [f"data.{o}" for o in getattr(get_class(cfg.data._target_), "augmentation_off", ())]
    changes += [f"model.arch.{o}" for o in getattr(network(cfg.model.net), "augmentation_off", ())]  # SpecAugment
    changes += [f"model.arch.{k}=0" for k, v in cfg.model.arch.items() if str(k).endswith("dropout") and v]
    changes += ["model.objective=null"] if cfg.model.get("objective") else []
    changed = []
    for change in changes:
        key, value = change.split("=", 1)
        value = yaml.safe_load(value)
        if OmegaConf.select(cfg, key) not in (None, value):
            OmegaConf.update(cfg, key, value, merge=False)
            changed.append(change)
    return changed


# Data settings that say where the data is on this machine, not what it is: never taken from a checkpoint.
WHERE_DATA_IS = ("data_dir", "cache_dir", "download", "workers")


def shape_settings(preprocessing: dict) -> dict:
    """The data settings that make inputs of the shape a checkpoint's preprocessing record describes."""
    keys = {k: preprocessing[k] for k in ("channels", "image_size", "fit", "sample_rate") if k in preprocessing}
    if "samples" in preprocessing and "sample_rate" in preprocessing:
        keys["clip_seconds"] = preprocessing["samples"] / preprocessing["sample_rate"]
    return keys


def found_in_data(cfg: DictConfig):
    """Data settings left null that the data itself gives, set in `cfg`: the number of classes of a data set that
    finds its classes (class or word folders, a table's labels: `class_names_found()`), and whatever else a data
    module reads from its files (`settings_found()`: a table's number of features, say)."""
    from hydra.utils import get_class

    from nnlab import app

    module = get_class(cfg.data._target_)
    unset = [k for k in cfg.data if not OmegaConf.is_missing(cfg.data, k) and cfg.data[k] is None]
    wanted = set(unset) & ({"num_classes"} if hasattr(module, "class_names_found") else set())
    if hasattr(module, "settings_found"):
        wanted |= set(unset)
    if not wanted:
        return
    data = app.data(cfg)
    found = data.settings_found() if hasattr(data, "settings_found") else {}
    if "num_classes" in wanted and "num_classes" not in found:
        found["num_classes"] = len(data.class_names_found())
    for key in unset:
        if key in found:
            cfg.data[key] = found[key]


def settle(cfg: DictConfig, run_id: str | None) -> tuple[DictConfig, object | None, dict | None]:
    """The run's config with what is computed once, before anything is built, set in a copy (Hydra's stays as
    composed): the id a resumed run had (`run_id`: W&B continues that run), the classes a data set finds, a sweep
    trial's W&B tags, and for train=false the model and data settings the checkpoint records; the network and the data
    checked to be of one kind. Returns it, and for train=false the model the checkpoint holds (read once) and what
    else the checkpoint records (hyperparameters, preprocessing, nnlab's record)."""
    from nnlab.checkpoint import model_from_checkpoint, read_checkpoint

    cfg, evaluated, recorded_by_checkpoint = copy.deepcopy(cfg), None, None
    given = {commands.key(o) for o in HydraConfig.get().overrides.task}
    with open_dict(cfg):
        if run_id:
            cfg.run_id = run_id
        if not cfg.train:  # evaluate what the checkpoint holds
            checkpoint = read_checkpoint(cfg.ckpt_path)
            evaluated = model_from_checkpoint(checkpoint, cfg.ckpt_path)
            recorded_by_checkpoint = {k: checkpoint.get(k) for k in ("hyper_parameters", "preprocessing", "nnlab")}
            settings = earlier.model_settings(checkpoint["hyper_parameters"])
            cfg.model = {"_target_": "nnlab.module.Classifier", **settings}  # in today's form, as config.yaml says
            recorded = checkpoint.get("nnlab", {}).get("data") or {}
            trained_on = checkpoint.get("nnlab", {}).get("choices", {}).get("data")
            if HydraConfig.get().runtime.choices.get("data") == trained_on or "data" not in given:
                # the data settings it was trained with (a tokenizer's vocabulary, say), unless given now
                for key, value in recorded.items():
                    # .keys(): `in` on a DictConfig is False for a ??? value (data.path), which this fills in
                    known = key in cfg.data.keys()  # noqa: SIM118
                    if known and key not in WHERE_DATA_IS and f"data.{key}" not in given:
                        cfg.data[key] = value
            else:  # other data: read as the checkpoint's inputs were (1-channel 28x28 for an MNIST model)
                for key, value in shape_settings(checkpoint.get("preprocessing") or {}).items():
                    if key in cfg.data.keys() and f"data.{key}" not in given:  # noqa: SIM118
                        cfg.data[key] = value
        else:
            found_in_data(cfg)
        if cfg.train and cfg.trainer.get("overfit_batches"):
            off = without_regularisation(cfg)
            log.info(
                f"trainer.overfit_batches={cfg.trainer.overfit_batches}: the same batches every epoch, with "
                f"augmentation, dropout and the training objective off ({' '.join(off) or 'none was on'})"
            )
        if (
            cfg.train
            and cfg.get("sweep") is not None
            and cfg.sweep.trial is not None
            and "wandb" in cfg.get("logger", {})
        ):  # a sweep trial's overrides as W&B tags
            skip = ("sweep.", "hydra.", "run_id=", "run_name=", "resume=", "paths.")
            tags = [
                o.lstrip("+~")[:64] for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(skip)
            ]
            cfg.logger.wandb.tags = [*cfg.logger.wandb.tags, *tags]
    check_pairing(cfg, cfg.model.net)
    return cfg, evaluated, recorded_by_checkpoint
