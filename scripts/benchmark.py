"""Our training pipeline against a plain PyTorch loop, in one run, on the same data.

    python scripts/benchmark.py                       # MLP and CNN throughput, then CNN time to 99%
    python scripts/benchmark.py --models mlp --rounds 2 --no-time-to-acc
    python scripts/benchmark.py --models cnn data.batch_size=256      # any Hydra override, both sides
    python scripts/benchmark.py --models lstm --rounds 3 --batches 60 --data-dir /path/holding/aclImdb
    python scripts/benchmark.py --models speech_rnn --rounds 3 --data-dir /path/holding/SpeechCommands
    python scripts/benchmark.py --ddp-cpu --rounds 3   # train.py trainer=ddp_cpu against trainer=cpu instead
    python scripts/benchmark.py --compare model.compile=false model.compile=true --models mlp cnn   # our pipeline
    python scripts/benchmark.py --compare callbacks/progress_bar=none callbacks/progress_bar=tqdm --models mlp
    python scripts/benchmark.py --trial-overhead 5 --models mlp   # a sweep of one-batch trials: the fixed cost

Both sides train the same network (the default model config) with the same optimizer, batch size and
gradient clipping on the same data in memory, augmentation (what the data module lists in its
`augmentation_off`) and schedule off. The plain loop iterates the data module's own training loader, the very
batches train.py's training sees (image or clip slices of the in-memory tensors, length-bucketed padded token
batches), and calls its on_after_batch_transfer (int16 clips to float); the network computes its log-mel
features and SpecAugment on both sides. Ours is the full pipeline train.py builds: Trainer, callbacks, metrics,
checkpoints and the offline W&B logger. Throughput is training samples per second (and tokens per second for
text), the first epoch of each side (warm-up) and validation excluded. An LSTM epoch takes
minutes on a CPU, so --batches N cuts every epoch to N batches (both sides). Small
machines are noisy (two plain-loop runs in a row can differ by 10%), so the sides alternate for
several rounds and the median of the per-round ratios is reported.

--ddp-cpu compares two train.py runs instead, as a user starts them: `trainer=ddp_cpu` (two processes over gloo,
each with the same data.batch_size, so the global batch is twice as large, and each with its share of the cores)
against `trainer=cpu` (one process, all cores), with the same overrides (augmentation and schedule off, one
validation batch); samples per second over both processes, from each run's metrics.json.

--compare A B ... trains our pipeline under each set of overrides in turn (alternating, every round), with the same
settings as above, and reports per variant the first epoch's time (warm-up: torch.compile compiles there, with a
fresh inductor cache per benchmark run), the steady throughput, the time per step, and the ratio to the first
variant. A variant of several overrides is one quoted argument: "trainer=cpu_bf16 data.batch_size=256".

--trial-overhead N runs a sweep as a user does (`train.py -m`, default launcher, W&B offline) of N trials that train
one batch, and breaks a trial's fixed cost into its phases: from the sweeper's launch of the trial to the end of its
first training step, and from the end of its last step to the sweeper holding its result (metrics.json's
`timeline`; the study's `startup_s` and `wind_down_s`).
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)
from nnlab.callbacks import AtomicCheckpointIO, Throughput, steady_rate
from nnlab.memory import keep_freed_memory

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
os.environ.setdefault("WANDB_SILENT", "true")  # keep the report readable; the offline run is written all the same


def load_cfg(model: str | None, overrides: list[str], out: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        chosen = [f"model={model}"] if model else []
        return compose("train", overrides=[*chosen, f"paths.output_dir={out}", *overrides])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_loss(model, x, y):
    """The loss training_step computes: label smoothing as configured; with model.adversarial, plus the loss under
    the perturbation."""
    if model.hparams.adversarial:
        return model.adversarial_step(x, y)[1]
    return model.loss(model(x), y, model.hparams.label_smoothing)


def plain_loop(cfg, dm, epochs: int, device) -> tuple[float, float]:
    """What one writes by hand: for each batch of the data module's own training loader, forward, loss, backward,
    (clip,) step. Returns (samples/s, tokens/s); the kind of data counts a batch."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model, _convert_="all").to(device).train()
    optimizer = model.configure_optimizers()
    clip, limit = cfg.trainer.gradient_clip_val, cfg.trainer.limit_train_batches
    samples, tokens = [], []
    for epoch in range(epochs):
        loader = dm.train_dataloader()
        loader.epoch = lambda epoch=epoch: epoch
        loader.finished = lambda: 0  # the whole epoch, whatever a pipeline run left in the data module's trainer
        sync(device)
        start, n, t = time.perf_counter(), 0, 0
        for batch in itertools.islice(loader, limit):
            x, y = dm.on_after_batch_transfer(batch, 0)  # int16 clips to float, say (no augmentation: no trainer)
            loss = training_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            counted = model.reads.count(x)
            n, t = n + counted[0], t + counted[1]
        sync(device)
        seconds = time.perf_counter() - start
        samples.append(n / seconds)
        tokens.append(t / seconds)
    return steady_rate(samples), steady_rate(tokens)


def training_flops(cfg, dm, device, batches: int) -> tuple[float, float]:
    """FLOPs of training per sample and per token (0 without tokens): forward, loss and backward, counted by PyTorch's
    FlopCounterMode over the data module's first `batches` training batches (padding included: it is computed). The
    optimizer's few FLOPs per parameter and the FFT of log-mel features are not counted. oneDNN is off while counting:
    its fused LSTM and GRU kernels are invisible to the counter; the plain implementation does the same products."""
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model, _convert_="all").to(device).train()
    loader = dm.train_dataloader()
    loader.epoch, loader.finished = (lambda: 0), (lambda: 0)  # epoch 0, from its first batch
    flops = samples = tokens = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN's flags warn about Intel GPUs
        off = torch.backends.mkldnn.flags(enabled=False)
    with off:
        for batch in itertools.islice(loader, batches):
            x, y = dm.on_after_batch_transfer(batch, 0)
            with FlopCounterMode(display=False) as counter:
                loss = training_loss(model, x, y)
                loss.backward()
            model.zero_grad(set_to_none=True)
            flops += counter.get_total_flops()
            counted = model.reads.count(x)
            samples, tokens = samples + counted[0], tokens + counted[1]
    return flops / samples, (flops / tokens if tokens else 0.0)


def matmul_peak(device, dtype, seconds: float = 2.0) -> tuple[float, int]:
    """The machine's practical peak in GFLOP/s: the fastest of repeated n x n matrix products (2 n^3 FLOPs each), at
    least three, for about `seconds`; n doubles from 256 until one product takes 50 ms (up to 2048 on a CPU, 8192 on a
    GPU), so a type the CPU only emulates (bf16 without its instructions: 0.3 GFLOP/s) is measured small. Returns
    (GFLOP/s, n)."""
    timed = lambda: _timed(device, torch.mm, a, b)
    n, cap = 256, 8192 if device.type == "cuda" else 2048
    while True:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        timed()  # warm-up: the library picks its kernel
        if n >= cap or timed() >= 0.05:
            break
        n *= 2
    best, spent, reps = float("inf"), 0.0, 0
    while reps < 3 or spent < seconds:
        took = timed()
        best, spent, reps = min(best, took), spent + took, reps + 1
    return 2 * n**3 / best / 1e9, n


def _timed(device, fn, *args) -> float:
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def ours(cfg, dm, epochs: int) -> tuple[float, float]:
    """The pipeline train.py builds, with the config's own callbacks and logger: steady (samples/s, tokens/s)."""
    throughput = run_ours(cfg, dm, epochs)
    return steady_rate(throughput.samples_per_s), steady_rate(throughput.tokens_per_s) or 0.0


def run_ours(cfg, dm, epochs: int) -> Throughput:
    """Train the pipeline train.py builds for `epochs` epochs; its Throughput callback, which measured each."""
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model, _convert_="all")
    loggers = [instantiate(c) for c in cfg.logger.values()]
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(
        cfg.trainer,
        max_epochs=epochs,
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    for lg in loggers:
        if hasattr(lg, "experiment") and hasattr(lg.experiment, "finish"):
            lg.experiment.finish()
    return next(c for c in callbacks if isinstance(c, Throughput))


class StopAtAccuracy(L.Callback):
    """Tests after every training epoch; stops once test accuracy reaches the target."""

    def __init__(self, dm, target: float):
        self.dm, self.target, self.spent, self.reached = dm, target, 0.0, None

    def on_train_epoch_start(self, trainer, pl_module):
        sync(pl_module.device)
        self.start = time.perf_counter()

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.spent += time.perf_counter() - self.start
        pl_module.eval()
        right = total = 0
        for batch in self.dm.test_dataloader():
            x, y = self.dm.on_after_batch_transfer(batch, 0)
            right += (pl_module(x).argmax(-1) == y).sum().item()
            total += len(y)
        acc = right / total
        pl_module.train()
        epoch = trainer.current_epoch + 1
        print(f"  epoch {epoch}: test/acc {acc:.4f}, training time so far {self.spent:.1f} s")
        if acc >= self.target and self.reached is None:
            self.reached = (self.spent, epoch, acc)
            trainer.should_stop = True


def time_to_accuracy(cfg, dm, target: float):
    """Train a default config (its augmentation and schedule) until test accuracy reaches the target.

    Counts training time only: the per-epoch test pass and validation are excluded."""
    L.seed_everything(cfg.seed, verbose=False)
    stop = StopAtAccuracy(dm, target)
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[stop],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(instantiate(cfg.model, _convert_="all"), datamodule=dm)
    return stop.reached


def augmentation_off(model: str, extra: list[str], out: str) -> list[str]:
    """The overrides that turn the model's default data set's augmentation off (its data module lists them)."""
    from hydra.utils import get_class

    cfg = load_cfg(model, extra, out)
    return [f"data.{o}" for o in getattr(get_class(cfg.data._target_), "augmentation_off", ())]


def train_py_rate(model: str, trainer: str, overrides: list[str], out: str) -> float:
    """Samples per second of one `python train.py model=<model> trainer=<trainer> ...` (its metrics.json)."""
    run_dir = tempfile.mkdtemp(prefix=f"{model}-{trainer}-", dir=out)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"model={model}",
        f"trainer={trainer}",
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(run_dir) / "metrics.json").read_text())["train/samples_per_s"]


def ddp_cpu_against_cpu(args, extra: list[str], out: str):
    rows = []
    for name in args.models:
        overrides = [
            *augmentation_off(name, extra, out),
            "model.scheduler=none",
            "budget.min_steps=0",  # the epochs asked for, also on small data (the budget would add epochs)
            f"trainer.max_epochs={args.epochs}",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            *extra,
        ]
        one, two = [], []
        for r in range(args.rounds):
            one.append(train_py_rate(name, "cpu", overrides, out))
            two.append(train_py_rate(name, "ddp_cpu", overrides, out))
            print(
                f"{name} round {r + 1}: trainer=cpu {one[-1]:,.0f} samples/s, trainer=ddp_cpu {two[-1]:,.0f} "
                f"samples/s, ratio {two[-1] / one[-1]:.2f}"
            )
        rows.append(
            (name, statistics.median(one), statistics.median(two), statistics.median(t / o for t, o in zip(two, one)))
        )
    print(f"\n{args.rounds} rounds of {args.epochs} epochs a side on {os.cpu_count()} CPUs; medians:")
    print("| model | trainer=cpu (samples/s) | trainer=ddp_cpu (samples/s) | ratio |\n|---|---|---|---|")
    for name, one, two, ratio in rows:
        print(f"| {name} | {one:,.0f} | {two:,.0f} | {ratio:.2f} |")


def compare(args, extra: list[str], out: str):
    """--compare: our pipeline under each variant's overrides, alternating every round."""
    rows = []
    for name in args.models:
        limit = [f"trainer.limit_train_batches={args.batches}"] if args.batches else []
        base = [
            *augmentation_off(name, extra, out),
            "model.scheduler=none",
            "budget.min_steps=0",  # the epochs asked for, also on small data (the budget would add epochs)
            *extra,
            *limit,
            "trainer.limit_val_batches=1",
        ]
        cfgs = {v: load_cfg(name, [*base, *v.split()], out) for v in args.compare}
        dm = instantiate(cfgs[args.compare[0]].data, _convert_="all")  # the variants share the data
        for cfg in cfgs.values():
            if cfg.data.get("num_classes", 0) is None:
                cfg.data.num_classes = len(dm.class_names_found())
        dm.prepare_data()
        dm.setup()
        rates, first = {v: [] for v in args.compare}, {}
        for r in range(args.rounds):
            for v, cfg in cfgs.items():
                throughput = run_ours(cfg, dm, args.epochs)
                rates[v].append(steady_rate(throughput.samples_per_s))
                first.setdefault(v, throughput.seconds[0])  # round 1: a cold start (compilation, caches)
                seconds = throughput.seconds[0]
                print(f"{name} round {r + 1}, {v}: first epoch {seconds:.1f} s, {rates[v][-1]:,.0f} samples/s")
        batch = cfgs[args.compare[0]].data.batch_size
        for v in args.compare:
            rate = statistics.median(rates[v])
            ratios = [a / b for a, b in zip(rates[v], rates[args.compare[0]])]
            rows.append((name, v, first[v], rate, 1000 * batch / rate, statistics.median(ratios)))
    print(f"\n{args.rounds} rounds of {args.epochs} epochs a variant; steady: the epochs after the first, medians:")
    print(
        "| model | variant | first epoch | steady samples/s | ms per step | ratio (median of rounds) |\n"
        "|---|---|---|---|---|---|"
    )
    for name, v, first_s, rate, ms, ratio in rows:
        print(f"| {name} | `{v}` | {first_s:.1f} s | {rate:,.0f} | {ms:.2f} | {ratio:.2f} |")


# A trial's phases, from its metrics.json `timeline` (nnlab.timeline): each row ends at its mark.
STARTUP_PHASES = (
    ("python", "process and interpreter start"),
    ("config", "Hydra: import, compose the config"),
    ("imports", "import torch, Lightning, W&B, nnlab"),
    ("built", "build the model, data module, loggers, trainer"),
    ("data", "load the data"),
    ("train_start", "start W&B, sanity check"),
    ("first_step", "the first training step"),
)
WIND_DOWN_PHASES = (
    ("tested", "last validation, checkpoints, test and its report"),
    ("loggers_closed", "close W&B"),
)


def trial_overhead(args, extra: list[str], out: str):
    """--trial-overhead N: a grid sweep of N trials of one training batch each (seeds 1..N, the first --models), as a
    user starts it (`train.py -m`, the default launcher and logger); each phase of a trial's fixed cost, median over
    the trials, from their metrics.json timelines and the study's record of when each result arrived."""
    from nnlab.sweep import load_study, storage_url

    sweep_dir = Path(out) / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"model={args.models[0]}",
        f"seed={','.join(str(s) for s in range(1, args.trial_overhead + 1))}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "budget.min_steps=0",
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.study_name=overhead",
    ]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    study = load_study(storage_url(None, sweep_dir), "overhead")
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    marks, launches, seen = [], [], []
    for t in trials:
        metrics = json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())
        tl = metrics["timeline"]
        marks.append(tl)
        launches.append(metrics["launched_at"])
        seen.append(metrics["launched_at"] + tl["last_step"] + t.user_attrs["wind_down_s"])
    gaps = [b - a for a, b in zip(seen, launches[1:])]

    def median(values) -> float:
        return statistics.median(values) if values else float("nan")

    print(f"\n{len(trials)} trials of one training batch (`{' '.join(cmd[3:])}`), {wall:.1f} s in all; medians:")
    print("| phase | seconds |\n|---|---|")
    before = "launch"
    for key, what in STARTUP_PHASES:
        print(f"| {what} | {median([m[key] - m.get(before, 0.0) for m in marks]):.2f} |")
        before = key
    startup = median([t.user_attrs["startup_s"] for t in trials])
    print(f"| **start-up: the sweeper's launch to the end of the first training step** | **{startup:.2f}** |")
    before = "last_step"
    for key, what in WIND_DOWN_PHASES:
        print(f"| {what} | {median([m[key] - m[before] for m in marks]):.2f} |")
        before = key
    rest = [w - (m[before] - m["last_step"]) for m, w in zip(marks, (t.user_attrs["wind_down_s"] for t in trials))]
    print(f"| write metrics.json, exit, the sweeper reads the result | {median(rest):.2f} |")
    wind_down = median([t.user_attrs["wind_down_s"] for t in trials])
    what = "wind-down: the end of the last training step to the sweeper holding the result"
    print(f"| **{what}** | **{wind_down:.2f}** |")
    print(f"| the sweeper: record the result in the study, launch the next trial | {median(gaps):.2f} |")


def main():
    keep_freed_memory()  # as train.py does
    # torch.compile's first epoch is measured cold: an inductor cache of this run's own, not one an earlier run left
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nnlab-bench-inductor-"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    p.add_argument("--epochs", type=int, default=2, help="epochs per side and round; the first is warm-up")
    p.add_argument("--rounds", type=int, default=5, help="rounds of plain loop then nnlab")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding MNIST/raw/, aclImdb/ or SpeechCommands/ (default: the config's)",
    )
    p.add_argument("--batches", type=int, default=0, help="batches per epoch, both sides (0: the whole epoch)")
    p.add_argument(
        "--time-to-acc",
        nargs="+",
        default=["model=cnn", "experiment=mnist_speedrun"],
        metavar="OVERRIDES",
        help="recipes (each one quoted set of overrides) whose training time to --target test accuracy is measured",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 1..N for each time-to-accuracy recipe")
    p.add_argument("--no-time-to-acc", action="store_true")
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--flop-batches", type=int, default=3, help="training batches whose FLOPs are counted")
    p.add_argument("--ddp-cpu", action="store_true", help="train.py trainer=ddp_cpu against trainer=cpu instead")
    p.add_argument("--compare", nargs="+", metavar="OVERRIDES", help="our pipeline under each set of overrides")
    p.add_argument(
        "--trial-overhead", type=int, metavar="N", help="a sweep of N one-batch trials: the phases of its fixed cost"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both sides, e.g. data.batch_size=256")
    args = p.parse_args()
    extra = ([f"paths.data_dir={args.data_dir}"] if args.data_dir else []) + args.overrides
    out = tempfile.mkdtemp(prefix="nnlab-bench-")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, run files in {out}")
    if args.ddp_cpu:
        return ddp_cpu_against_cpu(args, extra, out)
    if args.compare:
        return compare(args, extra, out)
    if args.trial_overhead:
        return trial_overhead(args, extra, out)

    # The practical peak, before the models heat the machine: fraction of it below is against fp32, or bf16 where the
    # trainer computes in bf16.
    found = {name: matmul_peak(device, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peaks = {name: gflops for name, (gflops, _) in found.items()}
    told = ", ".join(f"{name} {gflops:,.1f} GFLOP/s ({n} x {n})" for name, (gflops, n) in found.items())
    print(f"matmul peak: {told}")
    rows, usage = [], []
    for name in args.models:
        limit = [f"trainer.limit_train_batches={args.batches}"] if args.batches else []
        cfg = load_cfg(
            name,
            [
                *augmentation_off(name, extra, out),
                "model.scheduler=none",
                "budget.min_steps=0",  # the epochs asked for, also on small data (the budget would add epochs)
                *extra,
                *limit,
                "trainer.limit_val_batches=1",
            ],
            out,
        )
        dm = instantiate(cfg.data, _convert_="all")
        if cfg.data.get("num_classes", 0) is None:  # as train.py: the classes the data set finds
            cfg.data.num_classes = len(dm.class_names_found())
        dm.prepare_data()
        dm.setup()
        train_size = sum(len(y) for _, y in dm.train_dataloader())  # one whole epoch, before a trainer has used it
        plain, our = [], []
        for r in range(args.rounds):
            plain.append(plain_loop(cfg, dm, args.epochs, device))
            our.append(ours(cfg, dm, args.epochs))
            i = 1 if plain[-1][1] else 0  # tokens where the kind of data has them
            unit = "tokens/s" if i else "samples/s"
            print(
                f"{name} round {r + 1}: plain loop {plain[-1][i]:,.0f} {unit}, nnlab {our[-1][i]:,.0f} {unit}, "
                f"ratio {our[-1][i] / plain[-1][i]:.2f}"
            )
        i = 1 if plain[-1][1] else 0
        ratio = statistics.median(o[i] / p[i] for o, p in zip(our, plain))
        samples = statistics.median(o[0] for o in our)
        epoch_s = train_size / samples
        plain_samples, plain_tokens = (statistics.median(p[k] for p in plain) for k in (0, 1))
        our_tokens = statistics.median(o[1] for o in our)
        rows.append((name, cfg.data.batch_size, plain_samples, samples, plain_tokens, our_tokens, ratio, epoch_s))
        per_sample, per_token = training_flops(cfg, dm, device, args.flop_batches)
        # GFLOP/s: FLOPs per token times tokens/s for text (lengths vary from batch to batch), else per sample
        gflops = [
            (per_token * tok if per_token else per_sample * smp) / 1e9
            for smp, tok in ((plain_samples, plain_tokens), (samples, our_tokens))
        ]
        peak = "bf16" if "bf16" in str(cfg.trainer.precision) else "fp32"
        usage.append((name, per_sample, per_token, *gflops, peak, peaks[peak]))

    print(
        f"\n{args.rounds} rounds of {args.epochs} epochs a side; medians (samples: images, texts or clips; "
        "ratio: tokens/s for text, else samples/s):"
    )
    print(
        "| model | batch | plain loop (samples/s) | nnlab (samples/s) | plain loop (tokens/s) | nnlab (tokens/s) "
        "| ratio | one training epoch, nnlab |\n|---|---|---|---|---|---|---|---|"
    )
    for name, bs, plain, our, plain_tok, our_tok, ratio, epoch_s in rows:
        tok = f"{plain_tok:,.0f} | {our_tok:,.0f}" if plain_tok else "- | -"
        print(f"| {name} | {bs} | {plain:,.0f} | {our:,.0f} | {tok} | {ratio:.2f} | {epoch_s:.0f} s |")

    print(
        f"\nTraining FLOPs (forward and backward, FlopCounterMode over {args.flop_batches} batches) against the "
        "machine's matmul peak:"
    )
    print(
        "| model | training MFLOP per sample | plain loop GFLOP/s | nnlab GFLOP/s | peak GFLOP/s | plain loop, share "
        "of peak | nnlab, share of peak |\n|---|---|---|---|---|---|---|"
    )
    for name, per_sample, per_token, plain_g, our_g, peak, peak_g in usage:
        per = f"{per_sample / 1e6:,.1f}" + (f" ({per_token / 1e6:,.2f} a token)" if per_token else "")
        print(
            f"| {name} | {per} | {plain_g:,.1f} | {our_g:,.1f} | {peak_g:,.0f} ({peak}) | {plain_g / peak_g:.1%} "
            f"| {our_g / peak_g:.1%} |"
        )

    if not args.no_time_to_acc:
        time_to_accuracy_table(args, extra, out, device)


def time_to_accuracy_table(args, extra: list[str], out: str, device):
    """Each recipe's training time to the target test accuracy, seeds 1..N: median and range."""
    rows = []
    for recipe in args.time_to_acc:
        times, epochs, missed, dm = [], [], 0, None
        for seed in range(1, args.seeds + 1):
            cfg = load_cfg(None, [*recipe.split(), *extra, f"seed={seed}"], out)
            if dm is None:  # the seeds share the data (its split has a seed of its own): read it once
                dm = instantiate(cfg.data, _convert_="all")
                dm.prepare_data()
            print(f"\n{recipe} seed={seed}: time to {args.target:.1%} test accuracy")
            reached = time_to_accuracy(cfg, dm, args.target)
            if reached is None:
                missed += 1
                print(f"  not reached in {cfg.trainer.max_epochs} epochs")
            else:
                times.append(reached[0])
                epochs.append(reached[1])
        rows.append((recipe, times, epochs, missed))
    print(f"\nTraining time to {args.target:.1%} test accuracy (validation and the test passes excluded) on {device}:")
    print("| recipe | seeds | reached | median | range | epochs |\n|---|---|---|---|---|---|")
    for recipe, times, epochs, missed in rows:
        n = len(times) + missed
        if times:
            spread = f"{min(times):.1f}-{max(times):.1f} s"
            told = f"{statistics.median(times):.1f} s | {spread} | {min(epochs)}-{max(epochs)}"
        else:
            told = "- | - | -"
        print(f"| `{recipe}` | 1-{n} | {len(times)} of {n} | {told} |")


if __name__ == "__main__":
    main()
