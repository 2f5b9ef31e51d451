"""Bounds on one call's memory: an estimate from n, the model and the image size, made before any model work.

A call draws its n samples in batches of at most ``max_batch`` (default: as many as fit :data:`BATCH_BYTES` of
working memory for this model and image size, so the split, and with it the samples a seed gives, is the same on
every machine) and keeps, for each sample, its image at the input's size and its completion at the model's size.
A call whose estimate exceeds the memory the machine has available (``MemAvailable`` of ``/proc/meminfo``, or the
cgroup's limit when lower) is refused before any model work, with the largest n that fits.

Working memory of a batch of b samples, per sample (S = model size, L = (S/8)^2 code positions, K codes):
the sampler's Gumbel noise (:func:`pyinpaint.sampler.gumbel_noise`: float64 draws and their logs, then float32;
:data:`NOISE_BYTES` x L x K), its state (the caches of every gated block: :data:`STATE_BYTES_PER_CHANNEL` x L x
channels x resnets) and the texture generator's activations (:data:`GENERATOR_BYTES` x S^2 x its channels).
Independent of b: the sampler's weights in their step layouts (:data:`SAMPLER_BYTES_PER_PARAMETER` per PixelCNN
parameter), :data:`CALL_BYTES`, and the input's full-size work (reading, resizing, compositing:
:data:`IMAGE_BYTES_PER_PIXEL` per input pixel, and :data:`BLEND_BYTES_PER_PIXEL` more with ``blend="poisson"``,
whose solve covers the hole's box, at most the whole image). The constants come from peak RSS measured in fresh
processes on the shipped and the paper configurations, rounded up by 1.3-1.6x (docs/benchmarks.md, "Bounds").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pyinpaint.blend import BLENDS

BATCH_BYTES = 2 << 30  # working memory of one batch that the default max_batch aims at (paper model: 13 samples)
HEADROOM = 0.85  # fraction of the available memory a call may plan to use
NOISE_BYTES = 20  # per sample, position and code (float64 draws, their logs, float32 noise)
STATE_BYTES_PER_CHANNEL = 6  # per sample, position, PixelCNN channel and resnet
GENERATOR_BYTES = 32  # per sample, model pixel and texture-generator channel
SAMPLER_BYTES_PER_PARAMETER = 6  # the weights in step layouts and their set-up, once per call
CALL_BYTES = 16 << 20  # the condition network, h and the rest, once per call
IMAGE_BYTES_PER_PIXEL = 48  # per input pixel, once per call (reading, mask, resizing, one output in float)
BLEND_BYTES_PER_PIXEL = 144  # more per input pixel with blend="poisson" (the harmonic solve over the hole's box)
OUTPUT_BYTES_PER_PIXEL = 3  # per input pixel and sample: the RGB result kept


@dataclass(frozen=True)
class Plan:
    """How a call of n samples runs: ``batches`` as (first sample, size); the estimated peak, and the limit."""

    n: int
    batch: int
    batches: tuple[tuple[int, int], ...]
    estimate: int  # bytes
    available: int | None  # bytes, None when unknown

    def describe(self) -> str:
        return (f"n={self.n} is drawn in {len(self.batches)} batches of at most {self.batch} samples (max_batch; "
                f"about {_gib(self.estimate)} in all)")


def _gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB" if b >= 2 ** 28 else f"{b / 2 ** 20:.0f} MiB"


def available_memory() -> int | None:
    """Bytes the machine can still give this process: ``MemAvailable`` (Linux), lowered to the cgroup's free
    limit when there is one; None where unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                free = int(limit) - int(f.read())
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def per_sample_bytes(model) -> int:
    """Working bytes of one more sample in a batch (noise, sampler state, texture generator)."""
    st = model.structure.cfg
    s = model.image_size
    positions = (s // 8) ** 2
    noise = NOISE_BYTES * positions * st.num_embeddings
    state = STATE_BYTES_PER_CHANNEL * positions * st.channels * max(1, st.resnets)
    gen = GENERATOR_BYTES * s * s * model.generator.cfg.channels
    return noise + state + gen


def kept_bytes(model, size: tuple[int, int], windows: int = 1) -> int:
    """Bytes kept per sample until the call returns: the image at the input's size, and per window the completion
    at the model's size (float32) and the codes."""
    h, w = size
    s = model.image_size
    return OUTPUT_BYTES_PER_PIXEL * h * w + windows * (12 * s * s + 8 * (s // 8) ** 2)


def fixed_bytes(model, size: tuple[int, int], blend: str = BLENDS[0]) -> int:
    """Bytes a call needs whatever n: the sampler's weights in step layouts, the input's full-size work (with
    ``blend="poisson"`` its solve, one image at a time)."""
    h, w = size
    params = sum(p.numel() for p in model.structure.pixelcnn.parameters())
    per_pixel = IMAGE_BYTES_PER_PIXEL + (BLEND_BYTES_PER_PIXEL if blend == "poisson" else 0)
    return SAMPLER_BYTES_PER_PARAMETER * params + CALL_BYTES + per_pixel * h * w


def default_max_batch(model, windows: int = 1) -> int:
    """Most samples per batch within :data:`BATCH_BYTES` of working memory (at least 1); each sample is drawn once
    per window the model sees."""
    return max(1, BATCH_BYTES // (windows * per_sample_bytes(model)))


def estimate(model, n: int, size: tuple[int, int], max_batch: int | None = None, windows: int = 1,
             blend: str = BLENDS[0]) -> int:
    """Estimated peak bytes of a call of ``n`` samples on an input of ``size`` (height, width) whose holes the model
    sees in ``windows`` windows, beyond the loaded model."""
    b = min(n, max_batch or default_max_batch(model, windows))
    return (fixed_bytes(model, size, blend) + b * windows * per_sample_bytes(model)
            + n * kept_bytes(model, size, windows))


def check_max_batch(max_batch) -> int | None:
    if max_batch is None:
        return None
    if isinstance(max_batch, bool) or not hasattr(max_batch, "__index__") or max_batch.__index__() < 1:
        raise ValueError(f"max_batch must be None (automatic) or a positive integer (got {max_batch!r})")
    return int(max_batch.__index__())


def plan(model, n: int, size: tuple[int, int], *, max_batch: int | None = None, windows: int = 1,
         device: torch.device | str = "cpu", available: int | None = -1, blend: str = BLENDS[0]) -> Plan:
    """The batches of a call, or ValueError when its estimate exceeds the available memory (naming the largest n
    that fits). ``windows``: the windows the model sees (each sample is drawn once per window). ``available``:
    bytes (-1: measure now; None: unlimited). On a CUDA device the host keeps the outputs only; its working memory
    is the GPU's (not checked here)."""
    max_batch = check_max_batch(max_batch)
    batch = min(n, max_batch or default_max_batch(model, windows))
    batches = tuple((i, min(batch, n - i)) for i in range(0, n, batch))
    cpu = torch.device(device).type == "cpu"
    need = estimate(model, n, size, batch, windows, blend) if cpu else n * kept_bytes(model, size, windows)
    avail = available_memory() if available == -1 else available
    if avail is not None and need > HEADROOM * avail:
        fits = largest_n(model, size, HEADROOM * avail, batch, cpu, windows, blend)
        h, w = size
        what = (f"the largest n that fits is {fits}" if fits >= 1 else
                "not even one sample fits: use a smaller image, or free memory")
        raise ValueError(f"n={n} on a {w}x{h} image needs about {_gib(need)} of memory, more than "
                         f"{HEADROOM:.0%} of the {_gib(avail)} available: {what}")
    return Plan(n, batch, batches, need, avail)


def largest_n(model, size: tuple[int, int], budget: float, batch: int, cpu: bool = True, windows: int = 1,
              blend: str = BLENDS[0]) -> int:
    """The largest n whose estimate (batches of at most ``batch``) is within ``budget`` bytes (0 if none)."""
    kept = kept_bytes(model, size, windows)
    if not cpu:
        return max(0, int(budget // kept))
    free = budget - fixed_bytes(model, size, blend)
    per = windows * per_sample_bytes(model)
    within_one = int(free // (per + kept)) if free > 0 else 0  # n <= batch: one batch of n
    if within_one < batch:
        return max(0, within_one)
    return max(batch, int((free - batch * per) // kept))


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a call seeded ``seed``: the first batch uses ``seed`` itself (a call that
    fits one batch is unchanged); the others a mix of both (so no two (seed, batch) pairs share one)."""
    if index == 0:
        return seed
    return (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % (2 ** 63)
