"""`python train.py` against a plain PyTorch loop, in one run, on the same data.

    python scripts/benchmark.py                       # MLP and CNN throughput, then CNN time to 99%
    python scripts/benchmark.py --models mlp --rounds 2 --no-time-to-acc
    python scripts/benchmark.py --models mlp --no-time-to-acc --bare   # and a bare Lightning Trainer: the floor
    python scripts/benchmark.py --models cnn data.batch_size=256      # any Hydra override, both sides
    python scripts/benchmark.py --models lstm --rounds 3 --batches 60 --data-dir /path/holding/aclImdb
    python scripts/benchmark.py --models speech_rnn --rounds 3 --data-dir /path/holding/SpeechCommands
    python scripts/benchmark.py --ddp-cpu --rounds 3   # train.py trainer=ddp_cpu against trainer=cpu instead
    python scripts/benchmark.py --compare model.compile=false model.compile=true --models mlp cnn   # our pipeline
    python scripts/benchmark.py --compare callbacks/progress_bar=none callbacks/progress_bar=tqdm --models mlp
    python scripts/benchmark.py --trial-overhead 5 --models mlp   # a sweep of one-batch trials: the fixed cost
    python scripts/benchmark.py --inference outputs/<run>/checkpoints/best.ckpt ...   # a trained model's inference

Ours is `python train.py model=<model>` itself, started as a user starts it: its defaults (every callback, the
progress bar, the W&B logger, offline without credentials, the run's lifecycle), with augmentation off (what the data
module lists in its `augmentation_off`), `trainer.max_epochs=--epochs` (exactly that many: given on the command line),
one validation and one test batch, and the overrides given here; its rate is what its Throughput callback wrote to
metrics.json (each epoch from its first step to its last, validation excluded; the first epoch, warm-up, excluded).
The plain loop runs in this process, built by the same functions train.py builds with (nnlab.app.network and
nnlab.app.data, from the same composed config): the network, the optimizer its model configures and the same
one-cycle schedule, and for each batch of the data module's own training loader (image or clip slices of the
in-memory tensors, length-bucketed padded token batches) the data module's on_after_batch_transfer (int16 clips to
float), forward, loss, backward, gradient clipping as configured, step. The network computes its log-mel features
and SpecAugment on both sides. Both run with the same threads (torch's default, or OMP_NUM_THREADS). Throughput is
training samples per second (and tokens per second for text). An LSTM epoch takes minutes on a CPU, so --batches N
cuts every epoch to N batches (both sides). Small machines are noisy (two plain-loop runs in a row can differ by
10%), so the sides alternate for several rounds and the median of the per-round ratios is reported.

The time to an accuracy (--time-to-acc) is `python train.py <recipe> seed=<n>` with the recipe's own augmentation
and schedule, tested after every training epoch (+callbacks.stop_at_test_accuracy: nnlab.callbacks.StopAtTestAccuracy)
until the test accuracy reaches --target: training time only, validation and those test passes excluded.

--ddp-cpu compares two train.py runs instead, as a user starts them: `trainer=ddp_cpu` (two processes over gloo,
each with the same data.batch_size, so the global batch is twice as large, and each with its share of the cores)
against `trainer=cpu` (one process, all cores), with the same overrides (augmentation and schedule off, one
validation batch); samples per second over both processes, from each run's metrics.json.

--compare A B ... runs `python train.py` under each set of overrides in turn (alternating, every round), with the same
settings as above, and reports per variant the first epoch's time (warm-up: torch.compile compiles there, with a
fresh inductor cache per benchmark run), the steady throughput, the time per step, and the ratio to the first
variant. A variant of several overrides is one quoted argument: "trainer=cpu_bf16 data.batch_size=256".

--trial-overhead N runs a sweep as a user does (`train.py -m`, default launcher, W&B offline) of N trials that train
one batch, and breaks a trial's fixed cost into its phases: from the sweeper's launch of the trial to the end of its
first training step, and from the end of its last step to the sweeper holding its result (metrics.json's
`timeline`; the study's `startup_s` and `wind_down_s`).

--inference CHECKPOINT ... times what `nnlab predict` runs once an input is read, for each checkpoint: its export in
ONNX Runtime (written by nnlab export's own function, read as `nnlab predict EXPORT` reads it), the checkpoint's
model in eager PyTorch (nnlab.served, as `nnlab predict CHECKPOINT` runs it) and the same model under torch.compile.
Each takes the kind's input array (uint8 pixels, 16-bit samples as floats, --tokens token ids per text with no
padding) and gives probabilities; the latency at batch 1 and the throughput at batch 64 are medians over repeated
calls after warm-up, and torch.compile's first calls (its compilation) are timed apart. On a GPU the PyTorch sides
run there, with the copies of the input and the probabilities each way; ONNX Runtime runs on the CPU (nnlab[runtime]
is its CPU build). Reading files (decoding, resizing, tokenizing) is not timed.
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

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

import nnlab.config  # noqa: F401  (registers the resolvers conf/ uses)
from nnlab import app
from nnlab import optim as optimization
from nnlab.callbacks import steady_rate
from nnlab.memory import keep_freed_memory
from nnlab.run.settle import found_in_data

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
    """The loss training_step computes: label smoothing as configured; with an objective (model.objective: adversarial
    training, say), what it adds."""
    if model.objective is not None:
        return model.objective.step(model, x, y)[1]
    return model.loss(model(x), y, model.hparams.label_smoothing)


def plain_loop(cfg, dm, epochs: int, device) -> tuple[float, float]:
    """What one writes by hand: for each batch of the data module's own training loader, forward, loss, backward,
    (clip,) step, and the model's learning-rate schedule over the steps: the optimizer and schedule model.optim and
    model.sched configure (nnlab.optim), sized to this loop's steps. Returns (samples/s, tokens/s); the kind of data
    counts a batch."""
    app.cuda_check_unguarded()  # as in a process that never imported Lightning (nnlab.app.cuda_check_unguarded)
    torch.manual_seed(cfg.seed)
    model = app.network(cfg).to(device).train()
    optimizer = optimization.build_optimizer(model, model.hparams.lr, model.hparams.optim)
    clip, limit = cfg.trainer.gradient_clip_val, cfg.trainer.limit_train_batches
    batches = len(dm.train_dataloader())
    steps = epochs * (batches if limit is None else min(batches, limit))
    schedule = optimization.build_schedule(model.hparams.sched)
    schedule = schedule(optimizer, model.hparams.lr, steps, None) if schedule is not None else None
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
            if schedule is not None:
                schedule.step()
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
    model = app.network(cfg).to(device).train()
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


def bare_lightning(cfg, dm, epochs: int) -> tuple[float, float]:
    """--bare: the same network and data module in a Lightning Trainer with nothing of train.py's (no callback but
    the one that measures, no logger, progress bar, checkpoints or run lifecycle): Lightning's own loop, the floor
    under train.py's ratio. Its model still computes its metrics. Steady (samples/s, tokens/s)."""
    import lightning as L

    from nnlab.callbacks import Throughput

    L.seed_everything(cfg.seed, verbose=False)
    clock = Throughput()
    trainer = L.Trainer(
        max_epochs=epochs, limit_train_batches=cfg.trainer.limit_train_batches, limit_val_batches=0, logger=False,
        callbacks=[clock], enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        gradient_clip_val=cfg.trainer.gradient_clip_val, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(app.network(cfg), datamodule=dm)
    dm.trainer = None  # the plain loop's next epochs read the loader without this trainer
    return steady_rate(clock.samples_per_s), steady_rate(clock.tokens_per_s) or 0.0


def train_py(model: str | None, overrides: list[str], out: str, name: str = "run") -> dict:
    """`python train.py [model=<model>] <overrides>` as a user runs it; its metrics.json."""
    run_dir = tempfile.mkdtemp(prefix=f"{model or name}-", dir=out)
    chosen = [f"model={model}"] if model else []
    cmd = [sys.executable, str(ROOT / "train.py"), *chosen, *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def rates(metrics: dict) -> tuple[float, float]:
    """A train.py run's steady (samples/s, tokens/s): the epochs after the first, validation excluded."""
    return metrics["train/samples_per_s"], metrics["train/tokens_per_s"] or 0.0


STOP_AT = "+callbacks.stop_at_test_accuracy"


def time_to_accuracy(recipe: list[str], out: str, target: float):
    """`python train.py <recipe>` (its augmentation and schedule, its logger and callbacks), tested after every
    training epoch (nnlab.callbacks.StopAtTestAccuracy) until the test accuracy reaches the target: (training
    seconds, epoch, accuracy), or None. Training time only: validation and the test passes are excluded."""
    metrics = train_py(
        None, [*recipe, f"{STOP_AT}._target_=nnlab.callbacks.StopAtTestAccuracy", f"{STOP_AT}.target={target}"], out
    )
    if "time_to_target/epoch" not in metrics:
        return None
    return metrics["time_to_target/seconds"], int(metrics["time_to_target/epoch"]), metrics["time_to_target/acc"]


def augmentation_off(model: str, extra: list[str], out: str) -> list[str]:
    """The overrides that turn the model's default data set's augmentation off (its data module lists them)."""
    from hydra.utils import get_class

    cfg = load_cfg(model, extra, out)
    return [f"data.{o}" for o in getattr(get_class(cfg.data._target_), "augmentation_off", ())]


def train_py_rate(model: str, trainer: str, overrides: list[str], out: str) -> float:
    """Samples per second of one `python train.py model=<model> trainer=<trainer> ...` (its metrics.json)."""
    return train_py(model, [f"trainer={trainer}", *overrides], out)["train/samples_per_s"]


def ddp_cpu_against_cpu(args, extra: list[str], out: str):
    rows = []
    for name in args.models:
        overrides = [
            *augmentation_off(name, extra, out),
            "sched=none",
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


def measured(args, model: str, extra: list[str], out: str) -> list[str]:
    """The overrides of a measured train.py run, on top of its defaults: augmentation off (what the data module lists
    in its `augmentation_off`), --epochs epochs (--batches batches each), one validation and one test batch."""
    limit = [f"trainer.limit_train_batches={args.batches}"] if args.batches else []
    return [
        *augmentation_off(model, extra, out),
        f"trainer.max_epochs={args.epochs}",  # given on the command line: exactly these epochs, also on small data
        *extra,
        *limit,
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]


def compare(args, extra: list[str], out: str):
    """--compare: `python train.py` under each variant's overrides, alternating every round."""
    rows = []
    for name in args.models:
        base = measured(args, name, extra, out)
        steady, first = {v: [] for v in args.compare}, {}
        for r in range(args.rounds):
            for v in args.compare:
                metrics = train_py(name, [*base, *v.split()], out)
                steady[v].append(metrics["train/samples_per_s"])
                seconds = metrics["train/epoch_seconds"][0]
                first.setdefault(v, seconds)  # round 1: a cold start (compilation, caches)
                print(f"{name} round {r + 1}, {v}: first epoch {seconds:.1f} s, {steady[v][-1]:,.0f} samples/s")
        batch = load_cfg(name, [*base, *args.compare[0].split()], out).data.batch_size
        for v in args.compare:
            rate = statistics.median(steady[v])
            ratios = [a / b for a, b in zip(steady[v], steady[args.compare[0]])]
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


def inference_batch(reader, preprocessing: dict, size: int, tokens: int, rng):
    """A batch of `size` inputs as the kind's raw() reads them (random values of its type and shape)."""
    import numpy as np

    described = reader.describe(preprocessing)
    shape = [size if d == "batch" else tokens if isinstance(d, str) else d for d in described["shape"]]
    dtype = described["dtype"]
    if dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype == "int64":
        return rng.integers(2, 100, shape, dtype=np.int64)  # no padding (id 0): every text `tokens` long
    return (rng.integers(-8192, 8192, shape) / 32768).astype(np.float32)


def timed_calls(score, batch, seconds: float, at_least: int) -> float:
    """The median seconds of one call of score(batch), over `at_least` calls or `seconds`, whichever is more."""
    times, started = [], time.perf_counter()
    while len(times) < at_least or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        score(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def inference(args, out: str, device):
    """Latency at batch 1 and throughput at batch 64 of each checkpoint: ONNX Runtime, eager and compiled PyTorch."""
    import numpy as np

    from nnlab.kinds import kind
    from nnlab.predict import load
    from nnlab.served import Served, scoring

    rows = []
    for path in args.inference:
        model, preprocessing = load(path)
        reader = kind(preprocessing["kind"])
        name = Path(path).parent.parent.name if Path(path).parent.name == "checkpoints" else Path(path).name  # the run
        engines = {}
        try:
            from nnlab.export import export
            from nnlab.exported import Export

            folder = Path(out) / f"export-{len(rows)}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export(path, folder)
            engines["onnxruntime (CPU)"] = Export(folder).probabilities
        except ImportError as e:
            print(f"{name}: no ONNX Runtime side ({e.name} is not installed: pip install 'nnlab[train]')")
        served = Served(model, preprocessing).to(device).eval()
        engines[f"eager PyTorch ({device.type})"] = scoring(served, device)  # as predict runs a checkpoint
        if not args.no_compile:
            engines[f"torch.compile ({device.type})"] = scoring(torch.compile(served), device)
        rng = np.random.default_rng(0)
        one, many = (inference_batch(reader, preprocessing, n, args.tokens, rng) for n in (1, 64))
        for engine, score in engines.items():
            started = time.perf_counter()
            score(one), score(many)  # torch.compile compiles for both shapes here
            first = time.perf_counter() - started
            for _ in range(3):
                score(one), score(many)
            latency = timed_calls(score, one, seconds=args.seconds, at_least=20)
            per_batch = timed_calls(score, many, seconds=args.seconds, at_least=5)
            rows.append((name, reader.name, engine, first, latency * 1000, 64 / per_batch))
            print(f"{name} {engine}: batch 1 {latency * 1000:.3f} ms, batch 64 {64 / per_batch:,.0f} samples/s",
                  flush=True)  # fmt: skip
    from nnlab.cpu import cpu_name

    print(f"\ninference on {cpu_name()}: torch threads {torch.get_num_threads()}, ONNX Runtime's default threads; "
          f"texts of {args.tokens} tokens; speed-ups against eager PyTorch")  # fmt: skip
    print("| checkpoint | kind | engine | first calls s | batch 1 ms | speed-up | batch 64 samples/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, kind_name, engine, first, latency, throughput in rows:
        eager = next(r for r in rows if r[0] == name and r[2].startswith("eager"))
        print(f"| {name} | {kind_name} | {engine} | {first:.1f} | {latency:.3f} | {eager[4] / latency:.2f}x | "
              f"{throughput:,.0f} | {throughput / eager[5]:.2f}x |")  # fmt: skip


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
        "--bare", action="store_true", help="also a bare Lightning Trainer on the same network and data: the floor"
    )
    p.add_argument(
        "--trial-overhead", type=int, metavar="N", help="a sweep of N one-batch trials: the phases of its fixed cost"
    )
    p.add_argument(
        "--inference", nargs="+", metavar="CHECKPOINT", help="checkpoints whose inference is timed (see above)"
    )
    p.add_argument("--tokens", type=int, default=256, help="--inference: the tokens of each text (default 256)")
    p.add_argument("--seconds", type=float, default=2.0, help="--inference: seconds of calls timed per batch size")
    p.add_argument("--no-compile", action="store_true", help="--inference: no torch.compile side")
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
    if args.inference:
        return inference(args, out, device)

    # The practical peak, before the models heat the machine: fraction of it below is against fp32, or bf16 where the
    # trainer computes in bf16.
    found = {name: matmul_peak(device, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peaks = {name: gflops for name, (gflops, _) in found.items()}
    told = ", ".join(f"{name} {gflops:,.1f} GFLOP/s ({n} x {n})" for name, (gflops, n) in found.items())
    print(f"matmul peak: {told}")
    rows, usage = [], []
    for name in args.models:
        overrides = measured(args, name, extra, out)
        cfg = load_cfg(name, overrides, out)
        found_in_data(cfg)  # as train.py: data settings left null, read from the data (its classes, say)
        dm = app.data(cfg)
        dm.prepare_data()
        dm.setup()
        train_size = sum(len(y) for _, y in dm.train_dataloader())  # one whole epoch, before a trainer has used it
        plain, our, bare = [], [], []
        for r in range(args.rounds):
            plain.append(plain_loop(cfg, dm, args.epochs, device))
            our.append(rates(train_py(name, overrides, out)))
            i = 1 if plain[-1][1] else 0  # tokens where the kind of data has them
            unit = "tokens/s" if i else "samples/s"
            if args.bare:
                bare.append(bare_lightning(cfg, dm, args.epochs))
            floor = f", bare Lightning {bare[-1][i]:,.0f} ({bare[-1][i] / plain[-1][i]:.2f})" if args.bare else ""
            print(
                f"{name} round {r + 1}: plain loop {plain[-1][i]:,.0f} {unit}, nnlab {our[-1][i]:,.0f} {unit}, "
                f"ratio {our[-1][i] / plain[-1][i]:.2f}{floor}"
            )
        i = 1 if plain[-1][1] else 0
        ratio = statistics.median(o[i] / p[i] for o, p in zip(our, plain))
        if args.bare:
            floor = statistics.median(b[i] / p[i] for b, p in zip(bare, plain))
            print(f"{name}: bare Lightning against the plain loop, median of the rounds {floor:.2f}")
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
        times, epochs, missed = [], [], 0
        for seed in range(1, args.seeds + 1):
            print(f"\n{recipe} seed={seed}: time to {args.target:.1%} test accuracy")
            reached = time_to_accuracy([*recipe.split(), *extra, f"seed={seed}"], out, args.target)
            if reached is None:
                missed += 1
                print(f"  not reached in {load_cfg(None, [*recipe.split(), *extra], out).trainer.max_epochs} epochs")
            else:
                times.append(reached[0])
                epochs.append(reached[1])
                print(
                    f"  reached after epoch {reached[1]}: test/acc {reached[2]:.4f}, training time {reached[0]:.1f} s"
                )
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
