"""The one training loop for every stage, on one process or many (``torchrun``).

A stage contributes a small *task* (see :class:`Task`): its model, optimisers, one training step on a batch,
validation and a picture. The loop owns everything else: resumable data order, Polyak weight EMA, the
progress bar, the log, validation and image grids at intervals, atomic checkpoints from which ``resume``
continues exactly (same data order, same optimiser and RNG state, so the same numbers), PyTorch's
DistributedDataParallel, gradient accumulation and mixed precision.

Distributed (``torchrun``, ``WORLD_SIZE > 1``): the loop starts the process group (NCCL on CUDA, gloo on the
CPU), the task wraps its trained networks in DistributedDataParallel (:meth:`StepContext.wrap`), and each rank
takes its share of every *global* batch of the seeded order (``batch_size`` is the global batch), with masks
drawn by global sample index: N ranks at batch b see what one process sees at batch N*b. Only rank 0 writes.

Run directory layout::

    RUN/config.json          stage, model config, training arguments (written once)
    RUN/log.jsonl            one JSON line per log interval and per validation
    RUN/samples/step_N.png   image grids
    RUN/ckpt-N/              model, ema, optimiser and every rank's RNG state at step N (safetensors + JSON),
                             MANIFEST.json (its files with sizes and SHA-256); written as .ckpt-N.tmp-PID and
                             renamed into place, so it is complete or absent
    RUN/latest.json          which ckpt-N is the newest, and the checkpoints this run wrote (the only ones it
                             ever deletes)
    RUN/ema.safetensors      the EMA weights of the latest checkpoint: what evaluation and later stages use
    RUN/best/                with ``keep_best=True``: the EMA weights at the best validation so far (config.json,
                             ema.safetensors, vqvae/ for stages 2-3, best.json): a run folder of its own
    RUN/tensorboard/         with ``tensorboard=True``
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pyinpaint import io
from pyinpaint.io import resolve_device  # noqa: F401  (the package's one device rule)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_FORMAT = 2  # 1 (no MANIFEST.json, rank 0's RNG only) is still read
_RANK_SEED_STRIDE = 1_000_003
_CKPT_NAME = re.compile(r"ckpt-\d{8}")


@dataclass
class TrainArgs:
    out: str
    steps: int = 1000
    batch_size: int = 8  # the GLOBAL batch: over all ranks and accumulation steps
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
    accumulate: int = 1  # micro-batches per optimiser step (per rank)
    precision: str = "fp32"  # fp32 (official), bf16 or fp16 autocast
    # Speed options (same results up to float32 reduction order; see docs/benchmarks.md for what they pay):
    channels_last: bool = False  # NHWC memory format for the trained networks and the image batches
    compile: bool = False  # torch.compile (inductor) of the trained networks; the first steps compile
    tensorboard: bool = False
    # Train into an existing non-empty folder that is not a run (nothing in it is ever deleted).
    existing_out: bool = False
    # Keep the weights of the best validation so far in RUN/best (a run folder of its own: export, eval and
    # --init-from take it); the task's ``best`` names the metric and its direction.
    keep_best: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "val_every", "ckpt_every", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive (got {self.lr})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")


class Task(Protocol):
    """What a stage gives the loop."""

    stage: str
    model: nn.Module  # the trained module; its Polyak EMA copy is kept by the loop
    best: tuple[str, str]  # (validation metric, "max" or "min"): what --keep-best keeps

    def optimizers(self) -> dict[str, torch.optim.Optimizer]: ...

    def config(self) -> dict[str, Any]: ...

    def distribute(self, ctx: StepContext) -> None:
        """Wrap the trained networks that the steps call with ``ctx.wrap`` (DDP under torchrun)."""

    def train_step(self, ctx: StepContext) -> dict[str, float]:
        """One optimisation step over ``ctx.micro_batches()``: forward under ``ctx.autocast()``,
        ``ctx.backward(loss, optimiser_name)``, then ``ctx.step(optimiser_name)``; returns metrics."""

    def validate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]: ...

    def visualize(self, model: nn.Module, batch: Any):  # -> PIL.Image
        ...



@dataclass
class Distributed:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean of each value over the ranks (the same keys on every rank)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def any(self, flag: bool, device: torch.device) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device: torch.device) -> Distributed:
    """Start the process group when torchrun started several processes (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    started = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return Distributed(dist.get_rank(), dist.get_world_size(), started)


# ------------------------------------------------------------------------------------------------ one step
class StepContext:
    """What a task's ``train_step`` works with: this rank's micro-batches (each with the global sample index
    of its first image, for the masks), autocast, loss scaling for DDP / accumulation / fp16, and DDP wrapping.

    Gradients: DDP averages them over ranks, so a loss that is a MEAN over the batch gives the global batch's
    gradient when each micro-batch's loss is weighted 1/accumulate; a loss that is a SUM over the batch is
    weighted by the world size instead (``backward(loss, name, reduction="sum")``)."""

    def __init__(self, device: torch.device, precision: str, accumulate: int, ddp: Distributed,
                 optimizers: dict[str, torch.optim.Optimizer], channels_last: bool = False, compile: bool = False):
        self.device, self.precision, self.accumulate, self.ddp = device, precision, accumulate, ddp
        self.channels_last, self.compile = channels_last, compile
        self.dtype = PRECISIONS[precision]
        self.optimizers = optimizers
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for name in optimizers}
        self.wrapped: list[nn.parallel.DistributedDataParallel] = []
        self.step_index = 0
        self._micro: list[tuple[Any, int]] = []

    def begin(self, step: int, micro: list[tuple[Any, int]]) -> None:
        """Set the step's micro-batches: (micro-batch, global index of its first sample)."""
        self.step_index, self._micro = step, micro

    def wrap(self, module: nn.Module) -> nn.Module:
        """What the steps call for a trained network: ``module`` (moved to channels-last in place with
        ``channels_last``), in DistributedDataParallel under torchrun, then compiled with ``compile``. Buffers
        are not broadcast: the codebook EMA all-reduces its statistics and the spectral-norm vectors follow from
        identical weights."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        wrapped = module
        if self.ddp.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)
            self.wrapped.append(wrapped)
        if self.compile:
            import torch._inductor.config as inductor

            inductor.fallback_random = True  # dropout draws from torch's generator, as uncompiled (exact resume)
            wrapped = torch.compile(wrapped)
        return wrapped

    def batch_format(self, batch: Any) -> Any:
        """Image batches (4-d tensors) in channels-last memory format with ``channels_last``, else as they are."""
        if not self.channels_last:
            return batch
        if torch.is_tensor(batch):
            return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.batch_format(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.batch_format(v) for k, v in batch.items()}
        return batch

    def micro_batches(self) -> Iterator[tuple[Any, int]]:
        """(micro-batch, global index of its first sample); gradients are synchronised on the last one only."""
        last = len(self._micro) - 1
        for j, item in enumerate(self._micro):
            with contextlib.ExitStack() as stack:
                if j < last:
                    for m in self.wrapped:
                        stack.enter_context(m.no_sync())
                yield item

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: str, reduction: str = "mean") -> None:
        weight = 1.0 / self.accumulate if reduction == "mean" else float(self.ddp.world)
        self.scalers[optimizer].scale(loss.float() * weight).backward()

    def zero_grad(self, optimizer: str) -> None:
        self.optimizers[optimizer].zero_grad(set_to_none=True)

    def step(self, optimizer: str) -> None:
        scaler = self.scalers[optimizer]
        scaler.step(self.optimizers[optimizer])
        scaler.update()


# ------------------------------------------------------------------------------------------------ EMA, data
class EMA:
    """Polyak average of the parameters (TF ExponentialMovingAverage, no num_updates): shadow starts at the
    initial weights and moves by (1 - decay) towards them each step. Buffers (codebooks, spectral-norm
    vectors) are copied, not averaged, as the official code uses the live ones. Kept in float32."""

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


def check_batch(n_images: int, batch_size: int, world: int = 1, accumulate: int = 1) -> int:
    """The micro-batch size of each rank; raises ValueError when the global batch does not split or fit."""
    if batch_size % (world * accumulate):
        raise ValueError(f"the global batch {batch_size} does not split into {world} processes x {accumulate} "
                         f"accumulation steps: choose a multiple of {world * accumulate}")
    if n_images // batch_size == 0:
        raise ValueError(f"the training set has {n_images} images, fewer than one batch of {batch_size}")
    return batch_size // (world * accumulate)


def resumable_batches(dataset: Dataset, batch_size: int, seed: int, start_step: int, workers: int = 0,
                      pin_memory: bool = False, rank: int = 0, world: int = 1) -> Iterator[Any]:
    """Batches in an order that depends only on (seed, step): epoch e is a seeded permutation, the last
    incomplete batch is dropped. Starting at ``start_step`` yields exactly what an uninterrupted run would.
    With ``world`` ranks, rank r gets slice r of each global batch of ``batch_size``."""
    n = len(dataset)
    check_batch(n, batch_size, world)
    per_epoch = n // batch_size
    share = batch_size // world
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)[: per_epoch * batch_size].view(per_epoch, batch_size)
        order = order[:, rank * share:(rank + 1) * share]
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


def _split(batch: Any, parts: int) -> list[Any]:
    if parts == 1:
        return [batch]
    if torch.is_tensor(batch):
        return list(batch.chunk(parts))
    if isinstance(batch, (list, tuple)):
        cols = [_split(b, parts) for b in batch]
        return [type(batch)(c[i] for c in cols) for i in range(parts)]
    if isinstance(batch, dict):
        cols = {k: _split(v, parts) for k, v in batch.items()}
        return [{k: v[i] for k, v in cols.items()} for i in range(parts)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into micro-batches")


# ------------------------------------------------------------------------------------------------ checkpoints
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


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _say(msg: str) -> None:
    print(f"pyinpaint: {msg}", file=sys.stderr)


class Run:
    """A run directory: checkpoints in, checkpoints out. Only the writer (rank 0) calls ``save``."""

    def __init__(self, out: str | Path):
        self.dir = Path(out)

    @property
    def exists(self) -> bool:
        return (self.dir / "config.json").exists()

    def _latest_info(self) -> dict[str, Any] | None:
        p = self.dir / "latest.json"
        return io.load_json(p) if p.exists() else None

    def latest(self) -> tuple[int, Path] | None:
        info = self._latest_info()
        if info is None:
            return None
        return int(info["step"]), self.dir / info["checkpoint"]

    def owned(self) -> list[str]:
        """The checkpoint folders this run wrote (a run of the first format recorded only its newest)."""
        info = self._latest_info()
        if info is None:
            return []
        return list(info.get("written", [info["checkpoint"]]))

    def best_value(self) -> float | None:
        """The metric of the weights in RUN/best, or None when there are none."""
        p = self.dir / "best" / "best.json"
        return float(io.load_json(p)["value"]) if p.exists() else None

    def save_best(self, step: int, ema: EMA, metric: str, value: float) -> None:
        """Replace RUN/best with the current EMA weights: a folder that reads as a run (config.json, ema.safetensors,
        the run's vqvae/ when it has one) plus best.json (step, metric, value). Written beside, then renamed."""
        tmp = self.dir / f".best.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(self.dir / "config.json", tmp / "config.json")
        io.save_tensors(tmp / "ema.safetensors", ema.model.state_dict())
        if (self.dir / "vqvae").is_dir():
            shutil.copytree(self.dir / "vqvae", tmp / "vqvae")
        io.save_json(tmp / "best.json", {"step": step, "metric": metric, "value": value})
        _fsync_dir(tmp)
        best, old = self.dir / "best", self.dir / f".best.old-{os.getpid()}"
        if best.exists():
            best.rename(old)
        tmp.rename(best)
        _fsync_dir(self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def save(self, step: int, model: nn.Module, ema: EMA, optimizers: dict[str, torch.optim.Optimizer],
             rng: list[dict[str, torch.Tensor]], extra: dict[str, Any] | None = None) -> None:
        """Write ``ckpt-STEP`` as one unit (temporary folder, MANIFEST.json, rename), point latest.json at it,
        refresh ema.safetensors, then delete the older checkpoints this run wrote (and nothing else)."""
        name = f"ckpt-{step:08d}"
        final = self.dir / name
        owned = self.owned()
        if final.exists() and name not in owned:
            raise FileExistsError(f"{final} exists and was not written by this run: move it away to continue")
        for stale in self.dir.glob(".ckpt-*.tmp*"):  # what a killed save left behind (always ours: dot + .tmp)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        io.save_tensors(tmp / "model.safetensors", model.state_dict())
        io.save_tensors(tmp / "ema.safetensors", ema.model.state_dict())
        meta: dict[str, Any] = {"step": step, "world_size": len(rng), **(extra or {})}
        for oname, opt in optimizers.items():
            tensors, ometa = _optim_to_files(opt)
            io.save_tensors(tmp / f"optim-{oname}.safetensors", tensors)
            meta[f"optim-{oname}"] = ometa
        io.save_tensors(tmp / "rng.safetensors", {f"rank{r}.{k}": v for r, s in enumerate(rng) for k, v in s.items()})
        io.save_json(tmp / "state.json", meta)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        io.save_json(tmp / "MANIFEST.json", {"format": CHECKPOINT_FORMAT, "step": step, "files": files})
        _fsync_dir(tmp)
        if final.exists():  # ours, from an earlier save at this step (a resumed run stopped at once)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(self.dir)
        written = [n for n in owned if n != name] + [name]
        io.save_json(self.dir / "latest.json", {"step": step, "checkpoint": name, "written": written})
        self._publish_ema(final)
        for old in written[:-1]:
            if _CKPT_NAME.fullmatch(old):  # a name of ours, directly in the run folder
                shutil.rmtree(self.dir / old, ignore_errors=True)
        io.save_json(self.dir / "latest.json", {"step": step, "checkpoint": name, "written": [name]})

    def _publish_ema(self, ck: Path) -> None:
        io.atomic_write(self.dir / "ema.safetensors", lambda tmp: shutil.copyfile(ck / "ema.safetensors", tmp))

    def verify(self, ck: Path, *, repair: bool = False) -> None:
        """Check a checkpoint against its MANIFEST.json (first-format checkpoints have none and pass); with
        ``repair``, bring RUN/ema.safetensors in line with it if a crash left it behind."""
        if not ck.is_dir():
            raise FileNotFoundError(f"{self.dir}/latest.json names {ck.name}, which does not exist")
        manifest = ck / "MANIFEST.json"
        if manifest.exists():
            files = io.load_json(manifest)["files"]
            for fname, info in files.items():
                p = ck / fname
                if not p.exists():
                    raise ValueError(f"checkpoint {ck} is incomplete: {fname} is missing (see MANIFEST.json)")
                if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
                    raise ValueError(f"checkpoint {ck} is damaged: {p} does not match its MANIFEST.json checksum")
            ema_sum = files["ema.safetensors"]["sha256"]
        else:
            ema_sum = _sha256(ck / "ema.safetensors")
        top = self.dir / "ema.safetensors"
        if repair and (not top.exists() or _sha256(top) != ema_sum):
            _say(f"{top} was not the EMA of {ck.name} (a save was interrupted): copied it from the checkpoint")
            self._publish_ema(ck)

    def load(self, model: nn.Module, ema: EMA, optimizers: dict[str, torch.optim.Optimizer],
             device: torch.device, rank: int = 0) -> tuple[int, dict[str, Any], dict[str, torch.Tensor] | None]:
        """Load the newest checkpoint (check it first with :meth:`verify`); returns (step, state.json, this
        rank's saved RNG state or None)."""
        found = self.latest()
        if found is None:
            raise FileNotFoundError(f"{self.dir} has no complete checkpoint to resume from")
        step, ck = found
        io.load_state_into(model, io.load_tensors(ck / "model.safetensors", device), f"{ck}/model.safetensors")
        io.load_state_into(ema.model, io.load_tensors(ck / "ema.safetensors", device), f"{ck}/ema.safetensors")
        meta = io.load_json(ck / "state.json")
        for oname, opt in optimizers.items():
            _optim_from_files(opt, io.load_tensors(ck / f"optim-{oname}.safetensors", device), meta[f"optim-{oname}"])
        saved = io.load_tensors(ck / "rng.safetensors")
        mine = {k.split(".", 1)[1]: v for k, v in saved.items() if k.startswith(f"rank{rank}.")}
        if not mine and rank == 0 and "cpu" in saved:  # first format: rank 0's "cpu" and "cudaI" states
            mine = {"cpu": saved["cpu"]}
            if device.type == "cuda" and f"cuda{device.index or 0}" in saved:
                mine["cuda"] = saved[f"cuda{device.index or 0}"]
        return step, meta, mine or None

    def log(self, record: dict[str, Any]) -> None:
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, step: int) -> None:
        """Drop log lines past ``step`` (written by a run that was killed after its last checkpoint), and a
        partial last line (a kill during a write), saying so."""
        p = self.dir / "log.jsonl"
        if not p.exists():
            return
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
        kept = []
        for i, ln in enumerate(lines):
            try:
                record = json.loads(ln)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    _say(f"{p}: dropped a partial last line (the run was killed while writing it)")
                    break
                raise ValueError(f"{p}: line {i + 1} is not JSON (not a partial last line): fix or remove it") from None
            if record.get("step", 0) <= step:
                kept.append(ln)
        io.atomic_write(p, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in kept)))


def _init_from(source: str, config: dict[str, Any], task: Task, ema: EMA, device: torch.device) -> None:
    """Start from the weights of a run's newest checkpoint (model and EMA weights; same stage and architecture), or
    of a model (a shipped model's name or a model folder: the stage's networks; for stages 2 and 3 the run's VQ-VAE
    must be the model's own, so that the codes mean what they meant)."""
    from pyinpaint.runs import is_run, model_source

    src = Run(source)
    model = model_source(source)
    if model is not None:
        return _init_from_model(model, config, task, ema, device)
    if not is_run(source):
        raise FileNotFoundError(f"--init-from: {src.dir} is neither a run directory (no config.json) nor a model "
                                "(a shipped model's name or a folder written by pyinpaint export)")
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
    src.verify(ck)
    io.load_state_into(task.model, io.load_tensors(ck / "model.safetensors", device), f"{ck}/model.safetensors")
    io.load_state_into(ema.model, io.load_tensors(ck / "ema.safetensors", device), f"{ck}/ema.safetensors")


def _init_from_model(path: Path, config: dict[str, Any], task: Task, ema: EMA, device: torch.device) -> None:
    from pyinpaint.modelfile import load_model, vqvae_differences

    model = load_model(path, device)
    stage = config["stage"]
    if stage == "vqvae":
        nets = {"": model.vqvae}
    else:
        diff = vqvae_differences(task.vqvae, model.vqvae)
        if diff:
            raise ValueError(f"--init-from {path}: this run's VQ-VAE is not the model's own ({'; '.join(diff)}), and "
                             f"its {stage} network reads that VQ-VAE's codes: pass --vqvae {path} too")
        if stage == "structure":
            nets = {"": model.structure}
        elif model.discriminator is None:
            raise ValueError(f"--init-from {path}: the model has no discriminator, which training the texture "
                             "generator needs (export it with its discriminator)")
        else:
            nets = {"generator.": model.generator, "discriminator.": model.discriminator}
    state = {prefix + k: v for prefix, net in nets.items() for k, v in net.state_dict().items()}
    ours = task.model.state_dict()
    if state.keys() != ours.keys() or any(state[k].shape != ours[k].shape for k in ours):
        raise ValueError(f"--init-from {path}: the model's {stage} networks differ from this run's architecture "
                         f"(preset and sizes): {_arch(nets)} vs this run's {config['model'].get(stage, config['model'])}")
    io.load_state_into(task.model, state, f"{path} ({stage})")
    io.load_state_into(ema.model, state, f"{path} ({stage})")


def _arch(nets: dict[str, nn.Module]) -> str:
    return ", ".join(str(getattr(n, "cfg", type(n).__name__)) for n in nets.values())


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# Training arguments a resume must keep for the continuation to be exact (older runs lack the later ones).
_RESUME_KEYS = {"batch_size": None, "seed": None, "lr": None, "ema_decay": None, "ema_warmup": False,
                "accumulate": 1, "precision": "fp32"}


def check_start(run: Run, config: dict[str, Any], args: TrainArgs, resume: bool) -> None:
    """Everything that can refuse a start, checked before anything is written."""
    if resume:
        if not run.exists:
            raise FileNotFoundError(f"--resume: {run.dir} is not a run directory (no config.json)")
        saved = io.load_json(run.dir / "config.json")
        for key in ("stage", "model"):
            if saved.get(key) != config[key]:
                raise ValueError(f"--resume: {key} differs from the run's config.json: {saved.get(key)} vs {config[key]}")
        for key, default in _RESUME_KEYS.items():
            theirs = saved["train"].get(key, default)
            if theirs != config["train"][key]:
                raise ValueError(f"--resume: {key} differs from the run's ({theirs} vs "
                                 f"{config['train'][key]}): the continuation would not be exact")
        return
    if run.exists:
        raise FileExistsError(f"{run.dir} already holds a run: pass --resume to continue it, or choose another --out")
    if run.dir.exists() and not run.dir.is_dir():
        raise FileExistsError(f"--out {run.dir} is a file")
    if run.dir.is_dir() and any(run.dir.iterdir()) and not args.existing_out:
        raise FileExistsError(f"--out {run.dir} is a non-empty folder that is not a training run: choose an empty "
                              "or new folder, or pass --existing-out to train into it (nothing in it is deleted)")
    if args.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise RuntimeError("--tensorboard needs the tensorboard package: pip install 'pyinpaint[tensorboard]'") from None


def train(task: Task, train_set: Dataset, val_set: Dataset | None, args: TrainArgs, *, resume: bool = False,
          device: torch.device | None = None, progress: bool = True,
          on_create: Callable[[Path], None] | None = None) -> dict[str, float]:
    """Train ``task`` for ``args.steps`` steps in total (a resumed run continues up to that step).

    ``on_create(run_dir)``: called on rank 0 right after a fresh run folder was created (stages 2-3 copy their
    VQ-VAE into it). Under torchrun every rank calls this with the same arguments; rank 0 alone writes."""
    device = device or resolve_device(args.device)
    ddp = init_distributed(device)
    try:
        return _train(task, train_set, val_set, args, resume, device, progress, on_create, ddp)
    finally:
        if ddp.started_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(task, train_set, val_set, args, resume, device, progress, on_create, ddp: Distributed):
    run = Run(args.out)
    config = {"stage": task.stage, "model": task.config(), "train": asdict(args)}
    check_start(run, config, args, resume)
    check_batch(len(train_set), args.batch_size, ddp.world, args.accumulate)
    ddp.barrier()  # every rank checked the folder before rank 0 creates it
    if ddp.main:
        run.dir.mkdir(parents=True, exist_ok=True)
        if not resume and on_create is not None:
            on_create(run.dir)
    ddp.barrier()
    torch.manual_seed(args.seed + _RANK_SEED_STRIDE * ddp.rank)  # dropout: rank 0 as one process, others apart
    ema = EMA(task.model, args.ema_decay, args.ema_warmup)
    ctx = StepContext(device, args.precision, args.accumulate, ddp, task.optimizers(), args.channels_last,
                      args.compile)
    step = 0
    if resume and run.latest() is not None:
        if ddp.main:
            run.verify(run.latest()[1], repair=True)
        ddp.barrier()
        step, meta, rng = run.load(task.model, ema, ctx.optimizers, device, ddp.rank)
        for name, scaler in ctx.scalers.items():
            if f"scaler-{name}" in meta:
                scaler.load_state_dict(meta[f"scaler-{name}"])
        saved_world = int(meta.get("world_size", 1))
        if rng is not None and saved_world == ddp.world:
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], device)
        elif ddp.main:
            _say(f"resuming a run saved by {saved_world} process(es) on {ddp.world}: the data order and masks "
                 "continue exactly, the per-process random state (dropout) starts afresh")
        if ddp.main:
            run.truncate_log(step)
    elif args.init_from:
        _init_from(args.init_from, config, task, ema, device)
    if ddp.main:
        io.save_json(run.dir / "config.json", config)
    if step >= args.steps:
        return {}
    task.distribute(ctx)
    writer = None
    if args.tensorboard and ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run.dir / "tensorboard"), purge_step=step + 1)

    def save() -> None:
        rng = ddp.gather(_rng_state(device))
        if ddp.main:
            extra = {f"scaler-{n}": s.state_dict() for n, s in ctx.scalers.items() if s.is_enabled()}
            run.save(step, task.model, ema, ctx.optimizers, rng, extra)
        ddp.barrier()

    val_batch = None
    if val_set is not None and ddp.main:
        val_batch = next(iter(DataLoader(val_set, batch_size=min(4, len(val_set)), generator=_private_generator())))

    def validate() -> dict[str, float]:
        if val_set is None or not ddp.main:
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

    share = args.batch_size // ddp.world
    micro = share // args.accumulate
    batches = resumable_batches(train_set, args.batch_size, args.seed, step, args.workers,
                                pin_memory=device.type == "cuda", rank=ddp.rank, world=ddp.world)
    window: dict[str, list[float]] = defaultdict(list)
    last: dict[str, float] = {}
    bar = tqdm(total=args.steps, initial=step, disable=not progress or not ddp.main, desc=f"train {task.stage}",
               dynamic_ncols=True)
    t0 = time.perf_counter()
    with _StopAtStepBoundary() as stop:
        try:
            while step < args.steps:
                if ddp.any(stop.requested is not None, device):
                    bar.write(f"stopping at step {step} ({stop.requested or 'another process'}): checkpoint "
                              "saved, continue with --resume")
                    save()
                    raise KeyboardInterrupt(stop.requested)
                batch = ctx.batch_format(to_device(next(batches), device))
                first = step * args.batch_size + ddp.rank * share
                ctx.begin(step, [(b, first + j * micro) for j, b in enumerate(_split(batch, args.accumulate))])
                metrics = task.train_step(ctx)
                ema.update(task.model, step)
                step += 1
                for k, v in metrics.items():
                    window[k].append(float(v))
                if step % args.log_every == 0 or step == args.steps:
                    last = ddp.mean({k: sum(v) / len(v) for k, v in window.items()}, device)
                    window.clear()
                    elapsed = time.perf_counter() - t0
                    if ddp.main:
                        run.log({"step": step, "split": "train", **last, "seconds": round(elapsed, 2)})
                        if writer is not None:
                            for k, v in last.items():
                                writer.add_scalar(f"train/{k}", v, step)
                    bar.set_postfix({k: _fmt(v) for k, v in last.items()}, refresh=False)
                bar.update(1)
                if step % args.val_every == 0 or step == args.steps:
                    val = validate()
                    if val:
                        run.log({"step": step, "split": "val", **val})
                        if writer is not None:
                            for k, v in val.items():
                                writer.add_scalar(f"val/{k}", v, step)
                        last.update({f"val_{k}": v for k, v in val.items()})
                        bar.write(f"step {step}: " + ", ".join(f"val {k} {_fmt(v)}" for k, v in val.items()))
                        if args.keep_best:
                            key, better = task.best
                            old = run.best_value()
                            if old is None or (val[key] > old if better == "max" else val[key] < old):
                                run.save_best(step, ema, key, float(val[key]))
                                bar.write(f"step {step}: best val {key} so far, weights kept in {run.dir / 'best'}")
                if step % args.ckpt_every == 0 or step == args.steps:
                    save()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
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
