"""Evaluation of trained stages on a folder of images."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pyinpaint.data import ImageFolder
from pyinpaint.runs import load_vqvae
from pyinpaint.threads import check_threads, use_threads
from pyinpaint.train.vqvae import evaluate_reconstruction


def _image_batches(data, size: int, recipe: str, limit: int | None, batch_size: int, workers: int, device,
                   desc: str, progress: bool):
    """(number of images, iterator of batches on ``device``) of a folder under an evaluation recipe."""
    from tqdm.auto import tqdm

    dataset = ImageFolder(data, size=size, recipe=recipe)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    batches = (x.to(device) for x in tqdm(loader, total=math.ceil(len(dataset) / batch_size), desc=desc,
                                          disable=not progress))
    return len(dataset), batches


def eval_vqvae(run: str | Path, data: str | Path, *, batch_size: int = 16, limit: int | None = None,
               recipe: str = "resize", device: str | torch.device = "cpu", workers: int = 0,
               progress: bool = True, threads: int | None = None) -> dict[str, float]:
    """Reconstruction MSE ([-1, 1] scale, the paper's Table 3 measure) and codebook usage of a VQ-VAE run
    on the images of ``data`` (official evaluation preprocessing: resize to the model size). ``threads``: CPU
    threads (None: chosen from the machine's load, see :mod:`pyinpaint.threads`)."""
    model = load_vqvae(run, device)
    n, batches = _image_batches(data, model.cfg.image_size, recipe, limit, batch_size, workers, device,
                                "eval vqvae", progress)
    with torch.no_grad(), use_threads(threads, device=device) as th:
        metrics = evaluate_reconstruction(model, th.ticking(batches))
    return {"images": n, **metrics}


def eval_structure(run: str | Path, data: str | Path, *, masks: str = "protocol", seed: int = 0,
                   batch_size: int = 16, limit: int | None = None, device: str | torch.device = "cpu",
                   workers: int = 0, progress: bool = True, threads: int | None = None) -> dict[str, float]:
    """NLL of the true top codes in bits/dim (the paper's Table 3 measure) of a structure run, EMA weights,
    images resized to the model size, masks drawn from ``masks`` by image number. ``threads``: CPU threads (None:
    chosen from the machine's load, see :mod:`pyinpaint.threads`)."""
    from pyinpaint.masks import make_mask_source
    from pyinpaint.runs import load_structure
    from pyinpaint.train.structure import evaluate_nll

    model, vqvae = load_structure(run, device)
    size = model.cfg.image_size
    n, batches = _image_batches(data, size, "resize", limit, batch_size, workers, device, "eval structure", progress)
    with torch.no_grad(), use_threads(threads, device=device) as th:
        metrics = evaluate_nll(model, vqvae, th.ticking(batches), make_mask_source(masks, size, seed=seed))
    return {"images": n, **metrics}


def _heat(values: torch.Tensor, vmax: float) -> torch.Tensor:
    """[h, w] in [0, vmax] -> 3 x h x w in [-1, 1], a perceptual dark-blue -> yellow colour ramp."""
    ramp = torch.tensor([[0.05, 0.03, 0.20], [0.25, 0.10, 0.55], [0.70, 0.20, 0.45], [0.98, 0.55, 0.10],
                         [0.99, 0.95, 0.40]])
    t = (values.float().clamp(0, vmax) / vmax) * (len(ramp) - 1)
    lo = t.floor().long().clamp(max=len(ramp) - 2)
    frac = (t - lo).unsqueeze(-1)
    rgb = ramp[lo] * (1 - frac) + ramp[lo + 1] * frac
    return rgb.permute(2, 0, 1) * 2 - 1


def entropy_map(run: str | Path, image: str | Path, mask: str | Path, out: str | Path, *, seed: int = 0,
                invert_mask: bool = False, device: str | torch.device = "cpu") -> dict[str, float]:
    """The paper's Figure 9 for one image: sample a structure and record, at each position, the entropy (bits)
    of the predicted code distribution. Writes [masked image | entropy map | decoded sampled structure]."""
    import torch.nn.functional as F

    from pyinpaint import io
    from pyinpaint.data import preprocess
    from pyinpaint.io import read_image
    from pyinpaint.masks import load_mask, make_mask_source, MASK_SPECS
    from pyinpaint.runs import load_structure
    from pyinpaint.sampler import sample_cached

    if Path(run, "config.json").is_file() and not Path(run, "model.safetensors").is_file():
        model, vqvae = load_structure(run, device)  # a structure training run
    else:  # a shipped model's name or a model directory
        from pyinpaint.inpainter import get_inpainter

        loaded = get_inpainter(run, device).model
        model, vqvae = loaded.structure, loaded.vqvae
    size, k = model.cfg.image_size, model.cfg.num_embeddings
    x = preprocess(read_image(image), size, "resize")[None].to(device)
    if str(mask) in MASK_SPECS:
        m = make_mask_source(str(mask), size, seed=seed).sample(0)
    else:
        m = load_mask(mask, size, invert_mask)
    m = m[None].to(device)
    with torch.no_grad():
        masked = x * (1 - m)
        h = model.condition(masked, m)
        sampled = sample_cached(model.pixelcnn, h, vqvae.encoder.vq_t.embedding, seed=seed, entropy=True)
        cfg = vqvae.cfg
        zeros_b = torch.zeros(1, cfg.embedding_dim, cfg.bottom_size, cfg.bottom_size, device=device)
        structure = vqvae.decode(sampled.embeddings, zeros_b).clamp(-1, 1)
    ent = sampled.entropy[0].cpu()
    vmax = math.log2(k)
    heat = _heat(F.interpolate(ent[None, None], size=(size, size), mode="nearest")[0, 0], vmax)
    io.save_image(out, io.image_grid([[masked[0].cpu(), heat, structure[0].cpu()]]))
    hole = F.max_pool2d(m, 8)[0, 0].cpu() > 0  # code positions whose 8x8 patch touches the hole
    return {"mean_bits": float(ent[hole].mean()) if hole.any() else float("nan"),
            "mean_bits_known": float(ent[~hole].mean()) if (~hole).any() else float("nan"),
            "max_bits": float(ent.max()), "log2_k": vmax}


# ---------------------------------------------------------------------------------------------------------------
# Inpainting quality of a whole model (`pyinpaint eval inpaint`)
#
# A case is one image with one mask. The model fills it n times; each fill is scored inside the hole against the
# original (PSNR, SSIM, L1: the best of n and the mean over n), the n fills' diversity is their mean pairwise L1 in
# the hole, and the baselines (OpenCV's Telea and Navier-Stokes, a mean-colour fill) are scored on the same cases.
# Metrics are computed at the evaluation size on uint8 images, [0, 255] for PSNR and SSIM, [0, 1] for L1.
# Sharpness (:func:`sharpness`) is the fill's detail against the photo's around the hole (1 = as sharp as the photo);
# "sharpness" of a method is its fills' mean, "sharpness_truth" the same figure on the original image.
BASELINES = ("telea", "ns", "mean")
NVIDIA_BLOCKS = ("01-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%")  # 2,000 files each, by file number
METRICS = ("psnr", "ssim", "l1")


def nvidia_block(path: str | Path) -> str | None:
    """The hole-size block of a mask of the NVIDIA irregular test set (files 00000-11999), or None."""
    stem = Path(path).stem
    if len(stem) == 5 and stem.isdigit() and int(stem) < 12000:
        return NVIDIA_BLOCKS[int(stem) // 2000]
    return None


def baseline_fill(name: str, image, hole, *, radius: int = 3):
    """``image`` (H x W x 3 uint8) with ``hole`` (H x W bool) filled by a classical method: "telea" / "ns"
    (OpenCV's ``cv2.inpaint``, fast marching / Navier-Stokes, ``radius`` px) or "mean" (the known pixels' mean)."""

    if name == "mean":
        out = image.copy()
        known = image[~hole]
        out[hole] = np.round(known.mean(0)).astype(np.uint8) if len(known) else 128
        return out
    if name not in ("telea", "ns"):
        raise ValueError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError("the Telea and Navier-Stokes baselines need OpenCV: pip install opencv-python-headless "
                           "(or pip install 'pyinpaint[eval]')") from e
    flag = cv2.INPAINT_TELEA if name == "telea" else cv2.INPAINT_NS
    return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, radius, flag)


def hole_metrics(pred, target, hole) -> dict[str, float]:
    """PSNR (dB, peak 255), SSIM (scikit-image's 7x7 window, averaged over the hole's pixels) and L1 ([0, 1] scale)
    of ``pred`` against ``target`` (H x W x 3 uint8) inside ``hole`` (H x W bool, not empty)."""

    try:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    except ImportError as e:
        raise RuntimeError("eval inpaint needs scikit-image: pip install scikit-image (or 'pyinpaint[eval]')") from e
    p, t = pred[hole], target[hole]
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(t, p, data_range=255)) if not np.array_equal(p, t) else float("inf")
    ssim_map = structural_similarity(target, pred, channel_axis=2, data_range=255, full=True)[1]
    l1 = float(np.abs(p.astype(np.float64) - t.astype(np.float64)).mean() / 255.0)
    return {"psnr": psnr, "ssim": float(ssim_map[hole].mean()), "l1": l1}


def sharpness(image, hole, ring: int = 8) -> float:
    """Mean absolute Laplacian (4-neighbour, on the grey image) inside ``hole`` over that in a ring around it: pixels
    at most ``ring`` px (Chebyshev) outside the hole. Pixels whose Laplacian reads both sides of the hole border are
    left out (the hole's outer pixel row, the ring's inner one), so the seam itself does not count. 1 = the fill is as
    detailed as the photo around it, below 1 = blurrier. NaN when the hole has no interior or no ring."""
    import torch.nn.functional as F

    grey = torch.from_numpy(np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None, None]
    lap = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"),
                   torch.tensor([[[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]])).abs()[0, 0]
    h = torch.from_numpy(np.asarray(hole, bool)).float()[None, None]
    grow = lambda r: F.max_pool2d(h, 2 * r + 1, stride=1, padding=r)[0, 0] > 0  # noqa: E731
    inner = -F.max_pool2d(-h, 3, stride=1, padding=1)[0, 0] > 0  # the hole eroded by one pixel
    around = grow(ring + 1) & ~grow(1)
    if not inner.any() or not around.any():
        return float("nan")
    return float(lap[inner].mean() / lap[around].mean().clamp_min(1e-6))


def pairwise_l1(fills, hole) -> float:
    """Mean L1 ([0, 1] scale) inside ``hole`` over all pairs of ``fills`` (a list of H x W x 3 uint8 arrays)."""
    import itertools


    if len(fills) < 2:
        return 0.0
    vals = [f[hole].astype(np.float64) for f in fills]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(vals, 2)]) / 255.0)


def summarize(per_sample: list[dict[str, float]]) -> dict[str, float]:
    """Best of n (max PSNR, max SSIM, min L1, each on its own) and mean over n of each metric."""

    out = {}
    for m in METRICS:
        vals = np.array([s[m] for s in per_sample], dtype=np.float64)
        out[f"{m}_best"] = float(vals.min() if m == "l1" else vals.max())
        out[f"{m}_mean"] = float(vals.mean())
    return out


@dataclass
class Case:
    """One image with one mask."""

    image: Path
    mask: str  # file name, or the generator's name and index
    block: str  # NVIDIA hole-size block, or the mask kind
    hole: np.ndarray  # size x size bool


def _cases(images: list[Path], masks: list[str], size: int, per_block: int, seed: int) -> list[Case]:
    """Cases for each mask spec: "center" (every image), a generator name (random, protocol, box, stroke: mask i
    for image i), or a folder of mask files (NVIDIA-numbered files: a seeded subset of ``per_block`` per
    hole-size block, else ``per_block`` seeded files in one block "folder"); case j of a block takes image
    j mod len(images)."""

    from pyinpaint.data import list_images
    from pyinpaint.masks import MASK_EXTENSIONS, MASK_SPECS, load_mask, make_mask_source

    cases: list[Case] = []
    for spec in masks:
        if spec in MASK_SPECS:
            src = make_mask_source(spec, size, seed=seed)
            cases += [Case(img, f"{spec}-{i}", spec, src.sample(i)[0].numpy() > 0) for i, img in enumerate(images)]
            continue
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--masks {spec!r}: expected center, random, protocol, box, stroke or a folder of masks")
        files = list_images(folder, MASK_EXTENSIONS)
        blocks: dict[str, list[Path]] = {}
        for f in files:
            blocks.setdefault(nvidia_block(f) or "folder", []).append(f)
        rng = np.random.default_rng(seed)
        for name in sorted(blocks):
            chosen = sorted(rng.choice(len(blocks[name]), min(per_block, len(blocks[name])), replace=False))
            for j, idx in enumerate(chosen):
                f = blocks[name][idx]
                cases.append(Case(images[j % len(images)], f.name, name, load_mask(f, size)[0].numpy() > 0))
    return cases


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer): a fixed subset that covers
    a sorted folder from end to end (All-Age-Faces file names sort by age, for example)."""
    if count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def _load_eval_image(path: Path, size: int, upscale: int = 1):
    """The ground truth of a case: the image resized to ``size`` (the evaluation recipe), then, with ``upscale`` > 1,
    enlarged ``upscale`` times with bicubic filtering (a large photo whose fine detail is known), as H x W x 3
    uint8."""
    from PIL import Image

    from pyinpaint.data import load_image, preprocess

    x = preprocess(load_image(path), size, "resize")
    a = np.round((x.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    if upscale == 1:
        return a
    big = size * upscale
    return np.asarray(Image.fromarray(a).resize((big, big), Image.Resampling.BICUBIC))


def eval_inpaint(model: str | Path | None, images: str | Path, masks: list[str], *, n: int = 10, size: int = 256,
                 limit: int = 100, per_block: int = 50, seed: int = 0, baselines: tuple[str, ...] = BASELINES,
                 strategy: str = "auto", upscale: int = 1, out: str | Path | None = None, overwrite: bool = False,
                 device: str | torch.device = "cpu", progress: bool = True, context: str | None = None,
                 blend: str | None = None,
                 threads: int | None = None, batch_images: int | None = None) -> dict:
    """Evaluate a model (None: the default model) on ``images`` (``limit`` of the folder's images, evenly spread over
    its sorted list (see :func:`spread`), resized to ``size``, then enlarged ``upscale`` times with bicubic filtering)
    with each of ``masks`` (see :func:`_cases`; made at the enlarged size), the model filling with ``strategy`` (see
    :mod:`pyinpaint.crop`), ``context`` (as in :meth:`Inpainter.sample`: "known" or "sampled"; None: its default)
    and ``blend`` (:mod:`pyinpaint.blend`: "poisson" or "paste"; None: the default).
    Returns {"rows": one dict per (case, method), "summary": {block: {method: means}}}; with ``out`` writes
    results.csv, summary.csv and best_worst.png (existing ones only with ``overwrite``: checked before any work).
    ``threads``: CPU threads of each sampling call (None: chosen per call, see :mod:`pyinpaint.threads`). The cases
    are filled several to a batch (``batch_images``: at most that many; None: as many as the memory budget allows;
    each case gets the samples it gets alone, seeded ``seed`` + its number); "seconds" of the model's rows is the
    mean time per case."""
    from pyinpaint.blend import BLENDS, check_blend
    from pyinpaint.crop import STRATEGIES
    import time

    from tqdm.auto import tqdm

    from pyinpaint.data import list_images
    from pyinpaint.inpainter import CONTEXTS, get_inpainter

    context = CONTEXTS[0] if context is None else context
    blend = check_blend(BLENDS[0] if blend is None else blend)
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}: available {', '.join(CONTEXTS)}")
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    if out is not None and not overwrite:
        existing = [f for f in EVAL_FILES if (Path(out) / f).exists()]
        if existing:
            raise FileExistsError(f"{out} already holds {', '.join(existing)}: pass --overwrite (overwrite=True) to "
                                  "replace them, or choose another output folder")
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}: expected some of {', '.join(BASELINES)}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1 (got {limit})")
    check_threads(threads)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise ValueError(f"upscale must be a positive integer (got {upscale!r})")
    paths = spread(list_images(images), limit)
    inp = get_inpainter(model, device)
    cases = _cases(paths, list(masks), size * upscale, per_block, seed)
    rows: list[dict] = []
    # The picture shows the 4 cases where pyinpaint's best-of-n PSNR is furthest above the first baseline's (Telea's
    # by default; else its own PSNR) and the 4 furthest below: only those 8 candidates' fills are kept.
    ref = next((b for b in BASELINES if b in baselines), None)
    shown: list[tuple[float, int, Case, dict]] = []  # (margin, case number, case, fills by method), by margin
    scored = 0
    truths = {path: _load_eval_image(path, size, upscale) for path in paths}  # each image once (cases reuse them)
    todo = [(i, case) for i, case in enumerate(cases) if case.hole.any()]
    # the cases are filled in shared batches (Inpainter.inpaint_many), each with its own seed; the model's time is
    # reported as the mean per case
    results = inp.inpaint_many([(truths[case.image], case.hole) for _, case in todo], n,
                               seed=[seed + i for i, _ in todo], strategy=strategy, context=context, blend=blend,
                               threads=threads, batch_images=batch_images)
    model_seconds, ours = 0.0, []
    t0 = time.perf_counter()
    for (i, case), res in zip(tqdm(todo, desc="eval inpaint", disable=not progress), results):
        model_seconds += time.perf_counter() - t0
        truth = truths[case.image]
        base = {"case": i, "image": case.image.name, "mask": case.mask, "block": case.block,
                "hole_pct": round(100.0 * float(case.hole.mean()), 2),
                "sharpness_truth": sharpness(truth, case.hole)}
        fills = [np.asarray(im) for im in res.images]
        scores = [hole_metrics(f, truth, case.hole) for f in fills]
        ours.append({**base, "method": "pyinpaint", **summarize(scores),
                     "sharpness": float(np.mean([sharpness(f, case.hole) for f in fills])),
                     "diversity": pairwise_l1(fills, case.hole)})
        rows.append(ours[-1])
        best = fills[int(np.argmax([s["psnr"] for s in scores]))]
        by_method = {"pyinpaint": best, "pyinpaint 2": fills[0], "pyinpaint 3": fills[min(1, n - 1)]}
        ref_psnr = 0.0
        for b in baselines:
            t0 = time.perf_counter()
            fill = baseline_fill(b, truth, case.hole)
            seconds = time.perf_counter() - t0
            metrics = hole_metrics(fill, truth, case.hole)
            rows.append({**base, "method": b, **summarize([metrics]), "sharpness": sharpness(fill, case.hole),
                         "diversity": 0.0, "seconds": seconds})
            by_method[b] = fill
            ref_psnr = metrics["psnr"] if b == ref else ref_psnr
        margin = max(s["psnr"] for s in scores) - ref_psnr
        shown = sorted(shown + [(margin, i, case, by_method)], key=lambda t: (t[0], t[1]))
        if len(shown) > 8:
            del shown[4]  # neither among the 4 lowest nor the 4 highest
        scored += 1
        t0 = time.perf_counter()
    for row in ours:
        row["seconds"] = model_seconds / len(ours)
    summary = summarize_rows(rows)
    if out is not None:
        picks = shown[4:][::-1] + shown[:4] if scored > 8 else shown[::-1]
        _write_eval(Path(out), rows, summary, [(case, truths[case.image], fills) for _, _, case, fills in picks],
                    overwrite)
    return {"rows": rows, "summary": summary, "cases": len(cases), "model": str(inp.model.path or "in memory"),
            "strategy": strategy, "size": size * upscale, "blend": blend}


def summarize_rows(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{block: {method: mean of each metric, "cases": count}}, plus the block "all"."""

    cols = [f"{m}_{k}" for m in METRICS for k in ("best", "mean")] + ["sharpness", "sharpness_truth", "diversity",
                                                                       "seconds"]
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        for block in (r["block"], "all"):
            groups.setdefault(block, {}).setdefault(r["method"], []).append(r)

    def mean(rs: list[dict], c: str) -> float:  # sharpness is NaN for holes without interior or ring: left out
        vals = [r[c] for r in rs if c in r and not (c.startswith("sharpness") and math.isnan(r[c]))]
        return float(np.mean(vals)) if vals else float("nan")

    return {block: {method: {"cases": len(rs), **{c: mean(rs, c) for c in cols}} for method, rs in methods.items()}
            for block, methods in groups.items()}


def format_summary(summary: dict, n: int) -> str:
    """The table printed by `pyinpaint eval inpaint`: one line per (block, method)."""
    lines = [f"{'block':<9} {'method':<10} {'cases':>5}  {'PSNR best':>9} {'mean':>6}  {'SSIM best':>9} {'mean':>6}  "
             f"{'L1 best':>7} {'mean':>6}  {'sharp':>5} {'truth':>5}  {'divers.':>7} {'s/case':>7}",
             f"(best = best of n={n} samples for pyinpaint; baselines give one fill; PSNR dB, L1 [0,1], in the hole; "
             "sharp = mean |Laplacian| in the hole over a ring around it, truth = the same on the original)"]
    for block in sorted(summary, key=lambda b: (b == "all", b)):
        methods = summary[block]
        for method in sorted(methods, key=lambda m: (m != "pyinpaint", m)):
            s = methods[method]
            lines.append(f"{block:<9} {method:<10} {s['cases']:>5}  {s['psnr_best']:>9.2f} {s['psnr_mean']:>6.2f}  "
                         f"{s['ssim_best']:>9.3f} {s['ssim_mean']:>6.3f}  {s['l1_best']:>7.4f} {s['l1_mean']:>6.4f}  "
                         f"{s['sharpness']:>5.2f} {s['sharpness_truth']:>5.2f}  {s['diversity']:>7.4f} "
                         f"{s['seconds']:>7.3f}")
        if "pyinpaint" in methods and "telea" in methods:
            d = methods["pyinpaint"]["psnr_best"] - methods["telea"]["psnr_best"]
            lines.append(f"{block:<9} best-of-{n} PSNR minus Telea: {d:+.2f} dB")
    return "\n".join(lines)


EVAL_FILES = ("results.csv", "summary.csv", "best_worst.png")  # what eval_inpaint writes into ``out``


def _write_eval(out: Path, rows: list[dict], summary: dict, shown: list[tuple[Case, np.ndarray, dict]],
                overwrite: bool = False) -> None:
    """results.csv, summary.csv, and best_worst.png from ``shown``: rows of (case, ground truth, fills by method)."""
    import csv
    import io as _io

    import torch as _torch

    from pyinpaint import io

    out.mkdir(parents=True, exist_ok=True)

    def write_csv(path: Path, records: list[dict]) -> None:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["case"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        io.atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()), overwrite=overwrite)

    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", [{"block": b, "method": m, **s} for b, ms in summary.items() for m, s in ms.items()])
    if not shown:
        return
    to_t = lambda a: _torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1  # noqa: E731
    grid = []
    for case, truth, fills in shown:
        masked = truth.copy()
        masked[case.hole] = 128
        grid.append([to_t(truth), to_t(masked)] + [to_t(f) for f in fills.values()])
    io.save_image(out / "best_worst.png", io.image_grid(grid), overwrite=overwrite)
