"""The one training loop for every stage.

A stage contributes a small *task* (see :class:`Task`): its model, optimisers, one training step on a batch,
validation and a picture. The loop owns everything else: resumable data order, Polyak weight EMA, the
progress bar, the log, validation and image grids at intervals, and atomic checkpoints from which
``resume`` continues exactly (same data order, same optimiser and RNG state, so the same numbers).

Run directory layout::

    RUN/config.json          stage, model config, training arguments (written once)
    RUN/log.jsonl            one JSON line per log interval and per validation
    RUN/samples/step_N.png   image grids
    RUN/ckpt-N/              model, ema, optimiser and RNG state at step N (safetensors + JSON)
    RUN/latest.json          which ckpt-N is complete (updated atomically after it is written)
    RUN/ema.safetensors      the EMA weights of the latest checkpoint: what evaluation and later stages use
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pyinpaint import io
from pyinpaint.inpainter import resolve_device  # noqa: F401  (the package's one device rule)


@dataclass
class TrainArgs:
    out: str
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    ema_decay: float = 0.9997
    # TF ExponentialMovingAverage's num_updates: decay_t = min(decay, (1 + t) / (10 + t)). Off in the official
    # scripts; on, the average forgets the initial weights within a short run (a few thousand steps).
    ema_warmup: bool = False
    log_every: int = 50
    val_every: int = 500
    val_batches: int = 8  # batches of the validation set per validation (0 = the whole set)
    ckpt_every: int = 500
    workers: int = 0
    # Start from the weights (model and EMA) of another run of the same stage and architecture, with a fresh
    # optimiser at step 0: fine-tuning, e.g. with another learning rate (which --resume refuses to change).
    init_from: str | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive (got {self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")


class Task(Protocol):
    """What a stage gives the loop."""

    stage: str
    model: nn.Module  # the trained module; its Polyak EMA copy is kept by the loop

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def config(self) -> dict[str, Any]: ...

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One optimisation step (zero_grad, backward, optimiser steps); returns metrics."""

    def validate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]: ...

    def visualize(self, model: nn.Module, batch: Any):  # -> PIL.Image
        ...



class EMA:
    """Polyak average of the parameters (TF ExponentialMovingAverage, no num_updates): shadow starts at the
    initial weights and moves by (1 - decay) towards them each step. Buffers (codebooks, spectral-norm
    vectors) are copied, not averaged, as the official code uses the live ones."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """``step``: the number of optimiser steps taken before this one (for the warm-up)."""
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        for e, p in zip(self.model.parameters(), model.parameters()):
            if decay == 0.0:  # no averaging (stage 3 is evaluated with its raw weights)
                e.copy_(p)
            else:
                e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def resumable_batches(dataset: Dataset, batch_size: int, seed: int, start_step: int, workers: int = 0,
                      pin_memory: bool = False) -> Iterator[Any]:
    """Batches in an order that depends only on (seed, step): epoch e is a seeded permutation, the last
    incomplete batch is dropped. Starting at ``start_step`` yields exactly what an uninterrupted run would."""
    n = len(dataset)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}")
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)[: per_epoch * batch_size].view(per_epoch, batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # before the loader copies the dataset into its workers
        loader = DataLoader(dataset, batch_sampler=order[offset:].tolist(), num_workers=workers,
                            pin_memory=pin_memory, generator=_private_generator())
        for batch in loader:
            yield batch
            step += 1


def _private_generator() -> torch.Generator:
    # A DataLoader draws its workers' base seed from its generator, by default the global RNG; a resumed run
    # creates loaders at other moments than an uninterrupted one, so they must not touch the global RNG
    # (dropout draws from it).
    return torch.Generator().manual_seed(0)


def _optim_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state[int(pid)][k] = v
    opt.load_state_dict({"state": dict(state), "param_groups": meta["param_groups"]})


class Run:
    """A run directory: checkpoints in, checkpoints out."""

    def __init__(self, out: str | Path):
        self.dir = Path(out)

    @property
    def exists(self) -> bool:
        return (self.dir / "config.json").exists()

    def latest(self) -> tuple[int, Path] | None:
        p = self.dir / "latest.json"
        if not p.exists():
            return None
        info = io.load_json(p)
        return int(info["step"]), self.dir / info["checkpoint"]

    def save(self, step: int, task: Task, ema: EMA) -> None:
        name = f"ckpt-{step:08d}"
        tmp = self.dir / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        io.save_tensors(tmp / "model.safetensors", task.model.state_dict())
        io.save_tensors(tmp / "ema.safetensors", ema.model.state_dict())
        meta = {"step": step}
        for oname, opt in task.optimizers().items():
            tensors, ometa = _optim_to_files(opt)
            io.save_tensors(tmp / f"optim-{oname}.safetensors", tensors)
            meta[f"optim-{oname}"] = ometa
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        io.save_tensors(tmp / "rng.safetensors", rng)
        io.save_json(tmp / "state.json", meta)
        final = self.dir / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        io.save_json(self.dir / "latest.json", {"step": step, "checkpoint": name})
        shutil.copyfile(final / "ema.safetensors", self.dir / ".ema.tmp")
        (self.dir / ".ema.tmp").replace(self.dir / "ema.safetensors")
        for old in self.dir.glob("ckpt-*"):  # keep only the newest complete checkpoint
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, task: Task, ema: EMA, device: torch.device) -> int:
        found = self.latest()
        if found is None:
            raise FileNotFoundError(f"{self.dir} has no complete checkpoint to resume from")
        step, ck = found
        io.load_state_into(task.model, io.load_tensors(ck / "model.safetensors", device), f"{ck}/model.safetensors")
        io.load_state_into(ema.model, io.load_tensors(ck / "ema.safetensors", device), f"{ck}/ema.safetensors")
        meta = io.load_json(ck / "state.json")
        for oname, opt in task.optimizers().items():
            _optim_from_files(opt, io.load_tensors(ck / f"optim-{oname}.safetensors", device), meta[f"optim-{oname}"])
        rng = io.load_tensors(ck / "rng.safetensors")
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if states:
                torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])
        return step

    def log(self, record: dict[str, Any]) -> None:
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (written by a run that was killed after its last checkpoint)."""
        p = self.dir / "log.jsonl"
        if p.exists():
            lines = [ln for ln in p.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
            io.atomic_write(p, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))


def _init_from(src: Run, config: dict[str, Any], task: Task, ema: EMA, device: torch.device) -> None:
    """Load the model and EMA weights of run ``src``'s newest checkpoint (same stage and model config)."""
    if not src.exists:
        raise FileNotFoundError(f"--init-from: {src.dir} is not a run directory (no config.json)")
    theirs = io.load_json(src.dir / "config.json")
    if theirs["stage"] != config["stage"]:
        raise ValueError(f"--init-from: {src.dir} is a {theirs['stage']} run, this is a {config['stage']} run")

    def architecture(c: dict[str, Any]) -> dict[str, Any]:  # the networks' configs (not masks, seeds, paths)
        return {k: v for k, v in c["model"].items() if isinstance(v, dict)}

    if architecture(theirs) != architecture(config):
        raise ValueError(f"--init-from: the architecture differs from {src.dir}'s config.json: "
                         f"{architecture(theirs)} vs {architecture(config)}")
    found = src.latest()
    if found is None:
        raise FileNotFoundError(f"--init-from: {src.dir} has no complete checkpoint")
    ck = found[1]
    io.load_state_into(task.model, io.load_tensors(ck / "model.safetensors", device), f"{ck}/model.safetensors")
    io.load_state_into(ema.model, io.load_tensors(ck / "ema.safetensors", device), f"{ck}/ema.safetensors")


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def train(task: Task, train_set: Dataset, val_set: Dataset | None, args: TrainArgs, *, resume: bool = False,
          device: torch.device | None = None, progress: bool = True) -> dict[str, float]:
    """Train ``task`` for ``args.steps`` steps in total (a resumed run continues up to that step)."""
    device = device or resolve_device(args.device)
    run = Run(args.out)
    config = {"stage": task.stage, "model": task.config(), "train": asdict(args)}
    if resume:
        if not run.exists:
            raise FileNotFoundError(f"--resume: {run.dir} is not a run directory (no config.json)")
        saved = io.load_json(run.dir / "config.json")
        for key in ("stage", "model"):
            if saved[key] != config[key]:
                raise ValueError(f"--resume: {key} differs from the run's config.json: {saved[key]} vs {config[key]}")
        for key in ("batch_size", "seed", "lr", "ema_decay", "ema_warmup"):
            theirs = saved["train"].get(key, False if key == "ema_warmup" else None)  # older runs lack ema_warmup
            if theirs != config["train"][key]:
                raise ValueError(f"--resume: {key} differs from the run's ({theirs} vs "
                                 f"{config['train'][key]}): the continuation would not be exact")
    elif run.exists:
        raise FileExistsError(f"{run.dir} already holds a run: pass --resume to continue it, or choose another --out")
    run.dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    ema = EMA(task.model, args.ema_decay, args.ema_warmup)
    step = 0
    if resume and run.latest() is not None:
        step = run.load(task, ema, device)
        run.truncate_log(step)
    elif args.init_from:
        _init_from(Run(args.init_from), config, task, ema, device)
    io.save_json(run.dir / "config.json", config)
    if step >= args.steps:
        return {}

    val_batch = None
    if val_set is not None:
        val_batch = next(iter(DataLoader(val_set, batch_size=min(4, len(val_set)), generator=_private_generator())))

    def validate() -> dict[str, float]:
        if val_set is None:
            return {}
        n_batches = args.val_batches or math.ceil(len(val_set) / args.batch_size)
        loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers,
                            generator=_private_generator())
        batches = (to_device(b, device) for _, b in zip(range(n_batches), loader))
        with torch.no_grad():
            metrics = task.validate(ema.model, batches)
            img = task.visualize(ema.model, to_device(val_batch, device))
        io.save_image(run.dir / "samples" / f"step_{step:08d}.png", img)
        return metrics

    batches = resumable_batches(train_set, args.batch_size, args.seed, step, args.workers,
                                pin_memory=device.type == "cuda")
    window: dict[str, list[float]] = defaultdict(list)
    last: dict[str, float] = {}
    bar = tqdm(total=args.steps, initial=step, disable=not progress, desc=f"train {task.stage}", dynamic_ncols=True)
    t0 = time.perf_counter()
    with _StopAtStepBoundary() as stop:
        try:
            while step < args.steps:
                if stop.requested:
                    bar.write(f"stopping at step {step} ({stop.requested}): checkpoint saved, continue with --resume")
                    run.save(step, task, ema)
                    raise KeyboardInterrupt(stop.requested)
                batch = to_device(next(batches), device)
                metrics = task.train_step(batch, step)
                ema.update(task.model, step)
                step += 1
                for k, v in metrics.items():
                    window[k].append(float(v))
                if step % args.log_every == 0 or step == args.steps:
                    last = {k: sum(v) / len(v) for k, v in window.items()}
                    window.clear()
                    elapsed = time.perf_counter() - t0
                    run.log({"step": step, "split": "train", **last, "seconds": round(elapsed, 2)})
                    bar.set_postfix({k: _fmt(v) for k, v in last.items()}, refresh=False)
                bar.update(1)
                if step % args.val_every == 0 or step == args.steps:
                    val = validate()
                    if val:
                        run.log({"step": step, "split": "val", **val})
                        last.update({f"val_{k}": v for k, v in val.items()})
                        bar.write(f"step {step}: " + ", ".join(f"val {k} {_fmt(v)}" for k, v in val.items()))
                if step % args.ckpt_every == 0 or step == args.steps:
                    run.save(step, task, ema)
        finally:
            bar.close()
    return last


class _StopAtStepBoundary:
    """SIGINT / SIGTERM ask the loop to stop after the current step (and save); a second SIGINT stops at once."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
