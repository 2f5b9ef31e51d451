"""The ``pyinpaint`` command: parses arguments, calls the Python API, prints results. No logic of its own."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pyinpaint.config import STRUCTURE_PRESETS, TEXTURE_PRESETS, VQVAE_PRESETS


def _add_train_common(p: argparse.ArgumentParser, *, lr: float, batch_size: int, ema_decay: float = 0.9997) -> None:
    p.add_argument("--data", required=True, help="folder of training images (JPEG/PNG/WebP, searched recursively)")
    p.add_argument("--val-data", help="folder of validation images (validation MSE and image grids at intervals)")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--steps", type=int, default=1000, help="total training steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (official {batch_size})")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (official {lr:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and crops")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--ema-decay", type=float, default=ema_decay,
                   help=f"Polyak weight EMA decay, 0 = none (official {ema_decay:g} for this stage)")
    p.add_argument("--ema-warmup", action="store_true",
                   help="EMA decay min(decay, (1+t)/(10+t)) (TF's num_updates; not official): for short runs, whose "
                        "average would otherwise still remember the random initial weights")
    p.add_argument("--log-every", type=int, default=50, help="steps between log lines (default 50)")
    p.add_argument("--val-every", type=int, default=500, help="steps between validations and grids (default 500)")
    p.add_argument("--val-batches", type=int, default=8, help="validation batches per validation, 0 = all (default 8)")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--recipe", default="faces", choices=["faces", "scenes"],
                   help="training preprocessing: faces = resize to 266/256 of the size then random crop "
                        "(official CelebA-HQ); scenes = random crop (official Places2)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from the newest weights (model and EMA) of another run of the same stage and "
                        "architecture, with a fresh optimiser at step 0 (fine-tuning, e.g. with another --lr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, metavar="K",
                   help="CPU threads (default: chosen per call from the work and the machine's load; "
                        "see pyinpaint.threads)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyinpaint",
        description="Diverse image inpainting with a hierarchical VQ-VAE (Peng et al., CVPR 2021).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a stage of the model", description="Train one stage.")
    tsub = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    tv = tsub.add_parser("vqvae", help="stage 1: the hierarchical VQ-VAE",
                         description="Train the hierarchical VQ-VAE (official train_vqvae.py: MSE + 0.25 commitment, "
                                     "EMA codebooks, Adam 1e-4, batch 8, Polyak EMA 0.9997).")
    tv.add_argument("--config", default="paper", choices=sorted(VQVAE_PRESETS),
                    help="architecture preset (default paper: 256 px, official widths)")
    tv.add_argument("--image-size", type=int, help="override the preset's image size (multiple of 8)")
    _add_train_common(tv, lr=1e-4, batch_size=8)

    ts = tsub.add_parser("structure", help="stage 2: the structure generator (condition net + PixelCNN)",
                         description="Train the structure generator on the ground-truth top codes of a trained "
                                     "VQ-VAE (official train_structure_generator.py: summed cross entropy, Adam "
                                     "with warm-up and (t+1)^-0.35 decay, dropout 0.1, Polyak EMA 0.9997).")
    ts.add_argument("--vqvae", required=True, help="VQ-VAE run directory (its EMA weights are used, frozen)")
    ts.add_argument("--config", default="paper", choices=sorted(STRUCTURE_PRESETS),
                    help="architecture preset (default paper); image size and codebook come from the VQ-VAE")
    ts.add_argument("--masks", default="random",
                    help="training masks: center, center-box, random (default), box, stroke, protocol, or a "
                         "folder of mask files (nonzero = hole)")
    ts.add_argument("--val-masks", default="protocol", help="validation masks (default protocol: fixed, seeded)")
    ts.add_argument("--warmup", type=int, default=16000,
                    help="the schedule's warm-up constant (official 16000; smaller for short runs)")
    ts.add_argument("--dropout", type=float, help="override the preset's dropout (official 0.1)")
    _add_train_common(ts, lr=0.18, batch_size=8)

    tt = tsub.add_parser("texture", help="stage 3: the texture generator and its discriminator",
                         description="Train the texture generator (GAN) on the ground-truth structures of a trained "
                                     "VQ-VAE (official train_texture_generator.py: L1 + hinge GAN + 0.1 x VQ feature "
                                     "losses, 1:1 G/D steps, Adam 1e-4 betas (0.5, 0.999)).")
    tt.add_argument("--vqvae", required=True, help="VQ-VAE run directory (its EMA weights are used, frozen)")
    tt.add_argument("--config", default="paper", choices=sorted(TEXTURE_PRESETS),
                    help="architecture preset (default paper); image size and code width come from the VQ-VAE")
    tt.add_argument("--masks", default="random", help="training masks (as for 'train structure')")
    tt.add_argument("--val-masks", default="protocol", help="validation masks (default protocol)")
    tt.add_argument("--feature-weight", type=float, default=0.1, help="weight of each VQ feature loss (official 0.1)")
    _add_train_common(tt, lr=1e-4, batch_size=8, ema_decay=0.0)

    ev = sub.add_parser("eval", help="evaluate a trained stage, or a whole model's inpainting",
                        description="Evaluate a trained stage (vqvae, structure) or a whole model (inpaint).")
    esub = ev.add_subparsers(dest="stage", required=True, metavar="STAGE")
    evv = esub.add_parser("vqvae", help="reconstruction MSE and codebook usage of a VQ-VAE run",
                          description="Reconstruction MSE on the official [-1, 1] scale (paper Table 3: 0.0033 "
                                      "on CelebA-HQ validation) and codebook usage, with the run's EMA weights.")
    evv.add_argument("run", help="run directory written by 'pyinpaint train vqvae'")
    evv.add_argument("--data", required=True, help="folder of images to evaluate on")
    evv.add_argument("--batch-size", type=int, default=16)
    evv.add_argument("--limit", type=int, help="evaluate the first N images only")
    evv.add_argument("--recipe", default="resize", choices=["resize", "center-crop"],
                     help="evaluation preprocessing (default resize, as the official validation)")
    evv.add_argument("--device", default="auto")
    evv.add_argument("--workers", type=int, default=0)
    evv.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evv.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(evv)

    evs = esub.add_parser("structure", help="NLL (bits/dim) of a structure-generator run",
                          description="Negative log-likelihood of the true top codes in bits per dimension with the "
                                      "run's EMA weights (paper Table 3: about 1.24 on CelebA-HQ val, random masks).")
    evs.add_argument("run", help="run directory written by 'pyinpaint train structure'")
    evs.add_argument("--data", required=True, help="folder of images to evaluate on")
    evs.add_argument("--masks", default="protocol", help="masks (default protocol: seeded, the same every time)")
    evs.add_argument("--seed", type=int, default=0, help="seed of the masks")
    evs.add_argument("--batch-size", type=int, default=16)
    evs.add_argument("--limit", type=int, help="evaluate the first N images only")
    evs.add_argument("--device", default="auto")
    evs.add_argument("--workers", type=int, default=0)
    evs.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evs.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(evs)

    evi = esub.add_parser("inpaint", help="inpainting quality of a model against classical baselines",
                          description="Fill each (image, mask) case n times and score the fills inside the hole "
                                      "against the original: PSNR, SSIM and L1 of the best of n and the mean over "
                                      "n, diversity (mean pairwise L1 of the n fills), time per case; OpenCV's "
                                      "Telea and Navier-Stokes inpainting and a mean-colour fill on the same cases. "
                                      "Prints a table per mask block (NVIDIA hole-size blocks for NVIDIA-numbered "
                                      "mask files) and writes results.csv, summary.csv and best_worst.png "
                                      "(rows: the 4 cases where the model beats Telea most, then the 4 where it "
                                      "does worst; columns: original, masked, best of n, two samples, baselines).")
    evi.add_argument("--model", help="model directory (default: the faces model shipped with pyinpaint)")
    evi.add_argument("--images", required=True, help="folder of ground-truth images")
    evi.add_argument("--masks", action="append", required=True,
                     help="center, random, protocol, box, stroke, or a folder of mask files (nonzero = hole); "
                          "repeat for several (e.g. --masks center --masks ../shared/data/masks/nvidia-irregular-256)")
    evi.add_argument("-n", type=int, default=10, help="samples per case (default 10)")
    evi.add_argument("--limit", type=int, default=100,
                     help="N images evenly spread over the folder's sorted list (default 100)")
    evi.add_argument("--per-block", type=int, default=50,
                     help="masks drawn (seeded) from each block of a mask folder (default 50)")
    evi.add_argument("--size", type=int, default=256, help="evaluation size: images are resized to it (default 256)")
    evi.add_argument("--seed", type=int, default=0, help="seed of the mask choice and of the samples")
    evi.add_argument("--baselines", default="telea,ns,mean",
                     help="comma-separated baselines: telea, ns (OpenCV), mean (default all three; '' for none)")
    evi.add_argument("-o", "--out", help="folder for results.csv, summary.csv and best_worst.png")
    evi.add_argument("--device", default="auto")
    evi.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(evi)

    de = sub.add_parser("demo", help="inpaint a face that ships with scikit-image: no files needed",
                        description="Fill a generated hole in the astronaut portrait of scikit-image (Eileen Collins, "
                                    "public domain) n times with the default model (or --model) and write a grid: "
                                    "original, masked, the n completions.")
    de.add_argument("-o", "--out", default="pyinpaint-demo.png", help="output PNG (default pyinpaint-demo.png)")
    de.add_argument("-n", type=int, default=6, help="number of completions (default 6)")
    de.add_argument("--mask", default="center",
                    help="center (default), box, stroke, random, or a mask file for the 256x256 face")
    de.add_argument("--model", help="model directory (default: the faces model shipped with pyinpaint)")
    de.add_argument("--seed", type=int, default=0, help="seed of the samples and of a generated mask (default 0)")
    de.add_argument("--device", default="auto")
    _add_threads(de)

    sa = sub.add_parser("sample", help="inpaint an image: n diverse completions of a hole",
                        description="Fill the hole MASK (nonzero = fill) of IMAGE n times with a trained model; writes "
                                    "the n results as PNGs at the input's size and a grid (input, masked input, results).")
    sa.add_argument("image", help="image file (any size; greyscale/RGBA are converted to RGB)")
    sa.add_argument("mask", help="mask file of the same size: nonzero / white = the hole to fill")
    sa.add_argument("-n", type=int, default=10, help="number of completions (default 10), drawn in batches that fit memory")
    sa.add_argument("-o", "--out", required=True, help="output folder (created)")
    sa.add_argument("--model", help="model directory (from 'pyinpaint export' or 'convert-official'; default: the "
                                    "faces model shipped with pyinpaint)")
    sa.add_argument("--seed", type=int, help="seed: the same seed gives the same images (default: a fresh one, printed)")
    sa.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1 = official)")
    sa.add_argument("--top-k", type=int, help="sample among the k likeliest codes only (default: all = official)")
    sa.add_argument("--sampler", default="cached",
                    help="structure sampler: cached (default; incremental, fast), naive (the paper's: the whole "
                         "network per position) or graph (cached, replayed from a CUDA graph; CUDA only); all draw "
                         "the same codes for a seed")
    sa.add_argument("--rank", action="store_true", help="order the results by discriminator score, best first")
    sa.add_argument("--invert-mask", action="store_true", help="the mask marks the hole with 0 instead")
    sa.add_argument("--device", default="auto")
    sa.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(sa)

    ex = sub.add_parser("export", help="assemble a model directory from three training runs",
                        description="Assemble a model (config.json + model.safetensors + model card) from the runs of "
                                    "the three stages, with the weights the official pipeline uses (EMA for stages 1-2).")
    ex.add_argument("--vqvae", help="VQ-VAE run (default: the copy kept inside the structure run)")
    ex.add_argument("--structure", required=True, help="structure-generator run")
    ex.add_argument("--texture", required=True, help="texture-generator run")
    ex.add_argument("--out", required=True, help="model directory to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing model directory")

    co = sub.add_parser("convert-official", help="convert the authors' TensorFlow checkpoint to a model directory",
                        description="Read an official DSI TensorFlow checkpoint (the .index + .data pair; no TensorFlow "
                                    "needed), infer the widths from the variable shapes, take the rest from the "
                                    "official flags, and write a pyinpaint model directory.")
    co.add_argument("ckpt", nargs="+", help="checkpoint prefix, .index file or folder (several stage checkpoints allowed)")
    co.add_argument("--out", required=True, help="model directory to write")
    co.add_argument("--config", help="JSON file of the official flags (argparse names of test.py), e.g. image_size")
    co.add_argument("--image-size", type=int, help="the model's image size (official flag image_size, e.g. 256)")
    co.add_argument("--overwrite", action="store_true", help="replace an existing model directory")

    en = sub.add_parser("entropy", help="entropy map of the structure distribution for a masked image",
                        description="Sample one structure for IMAGE with hole MASK and save, side by side: the "
                                    "masked image, the per-position entropy (bits, 0 to log2 K) of the predicted "
                                    "code distribution along the sampled structure, and the decoded structure "
                                    "(the paper's Figure 9).")
    en.add_argument("run", help="structure run directory")
    en.add_argument("image", help="image file")
    en.add_argument("mask", help="mask file (nonzero = hole), or center / random / protocol")
    en.add_argument("-o", "--out", required=True, help="output PNG")
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--invert-mask", action="store_true", help="the mask file marks the hole with 0")
    en.add_argument("--device", default="auto")
    return parser


def _train_vqvae(a: argparse.Namespace) -> int:
    from pyinpaint.config import vqvae_preset
    from pyinpaint.data import ImageFolder
    from pyinpaint.train.loop import resolve_device, train
    from pyinpaint.train.vqvae import VQVAETask

    overrides = {"image_size": a.image_size} if a.image_size else {}
    cfg = vqvae_preset(a.config, **overrides)
    args = _train_args(a)
    device = resolve_device(a.device)
    train_set = ImageFolder(a.data, size=cfg.image_size, recipe=a.recipe, seed=a.seed)
    val_set = ImageFolder(a.val_data, size=cfg.image_size, recipe="resize") if a.val_data else None
    import torch
    torch.manual_seed(a.seed)  # the initial weights depend on the seed only
    task = VQVAETask(cfg, lr=a.lr, device=device)
    print(f"training vqvae ({a.config}, {cfg.image_size}px, "
          f"{sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M parameters) on {len(train_set)} images, "
          f"device {device}, run {a.out}", file=sys.stderr)
    last = train(task, train_set, val_set, args, resume=a.resume, device=device, progress=not a.quiet)
    if last:
        print("final: " + ", ".join(f"{k} {v:.5g}" for k, v in last.items()))
    return 0


def _train_args(a: argparse.Namespace):
    from pyinpaint.train.loop import TrainArgs

    return TrainArgs(out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device=a.device,
                     ema_decay=a.ema_decay, ema_warmup=a.ema_warmup, log_every=a.log_every, val_every=a.val_every,
                     init_from=a.init_from,
                     val_batches=a.val_batches, ckpt_every=a.ckpt_every, workers=a.workers)


def _train_on_vqvae(a: argparse.Namespace, make_task) -> int:
    """Stages 2 and 3: train ``make_task(vqvae, masks, val_masks, device)`` on the codes of a VQ-VAE run,
    keeping a copy of that VQ-VAE in the new run."""
    import torch

    from pyinpaint.data import ImageFolder, make_mask_source
    from pyinpaint.runs import copy_vqvae_into, load_vqvae
    from pyinpaint.train.loop import resolve_device, train

    device = resolve_device(a.device)
    vq = load_vqvae(Path(a.out) / "vqvae" if a.resume else Path(a.vqvae), device)
    size = vq.cfg.image_size
    train_set = ImageFolder(a.data, size=size, recipe=a.recipe, seed=a.seed)
    val_set = ImageFolder(a.val_data, size=size, recipe="resize") if a.val_data else None
    masks = make_mask_source(a.masks, size, seed=a.seed)
    val_masks = make_mask_source(a.val_masks, size, seed=12345)
    torch.manual_seed(a.seed)  # the initial weights depend on the seed only
    task = make_task(vq, masks, val_masks, device)
    if not a.resume:
        if Path(a.out, "config.json").exists():
            raise FileExistsError(f"{a.out} already holds a run: pass --resume to continue it, or choose another --out")
        copy_vqvae_into(a.out, a.vqvae)
    print(f"training {task.stage} ({a.config}, {size}px, "
          f"{sum(p.numel() for p in task.model.parameters()) / 1e6:.2f}M parameters) on {len(train_set)} images, "
          f"masks {a.masks}, device {device}, run {a.out}", file=sys.stderr)
    last = train(task, train_set, val_set, _train_args(a), resume=a.resume, device=device, progress=not a.quiet)
    if last:
        print("final: " + ", ".join(f"{k} {v:.5g}" for k, v in last.items()))
    return 0


def _train_structure(a: argparse.Namespace) -> int:
    from pyinpaint.config import structure_preset
    from pyinpaint.train.structure import StructureTask

    def make_task(vq, masks, val_masks, device):
        overrides = dict(image_size=vq.cfg.image_size, embedding_dim=vq.cfg.embedding_dim,
                         num_embeddings=vq.cfg.num_embeddings)
        if a.dropout is not None:
            overrides["dropout"] = a.dropout
        return StructureTask(structure_preset(a.config, **overrides), vq, masks, val_masks, lr=a.lr,
                             warmup=a.warmup, device=device, vqvae_run=str(Path(a.vqvae).resolve()))

    return _train_on_vqvae(a, make_task)


def _train_texture(a: argparse.Namespace) -> int:
    from pyinpaint.config import texture_preset
    from pyinpaint.train.texture import TextureTask

    def make_task(vq, masks, val_masks, device):
        cfg = texture_preset(a.config, image_size=vq.cfg.image_size, embedding_dim=vq.cfg.embedding_dim)
        return TextureTask(cfg, vq, masks, val_masks, lr=a.lr, feature_weight=a.feature_weight, device=device,
                           vqvae_run=str(Path(a.vqvae).resolve()))

    return _train_on_vqvae(a, make_task)


def _eval_structure(a: argparse.Namespace) -> int:
    from pyinpaint.evaluate import eval_structure
    from pyinpaint.train.loop import resolve_device

    m = eval_structure(a.run, a.data, masks=a.masks, seed=a.seed, batch_size=a.batch_size, limit=a.limit,
                       device=resolve_device(a.device), workers=a.workers, progress=not a.quiet, threads=a.threads)
    if a.json:
        print(json.dumps(m))
    else:
        print(f"images  {m['images']}")
        print(f"NLL     {m['bpd']:.4f} bits/dim  (masks {a.masks}; paper Table 3, CelebA-HQ val: 1.243)")
    return 0


def _entropy(a: argparse.Namespace) -> int:
    from pyinpaint.evaluate import entropy_map
    from pyinpaint.train.loop import resolve_device

    info = entropy_map(a.run, a.image, a.mask, a.out, seed=a.seed, invert_mask=a.invert_mask,
                       device=resolve_device(a.device))
    print(f"wrote {a.out}: mean entropy {info['mean_bits']:.2f} bits in the hole, {info['mean_bits_known']:.2f} "
          f"outside (max {info['max_bits']:.2f})")
    return 0


def _sample(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from pyinpaint import io
    from pyinpaint.data import load_mask
    from pyinpaint.inpainter import Inpainter
    from pyinpaint.train.loop import resolve_device

    from pyinpaint.inpainter import default_model

    inp = Inpainter.load(a.model or default_model(), device=resolve_device(a.device))
    mask = load_mask(a.mask, invert=True)[0].numpy() if a.invert_mask else a.mask
    bar = tqdm(desc="sampling structures", unit="pos", disable=a.quiet, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    t0 = time.perf_counter()
    res = inp.inpaint(a.image, mask, a.n, seed=a.seed, temperature=a.temperature, top_k=a.top_k,
                      sampler=a.sampler, rank=a.rank, progress=progress, threads=a.threads)
    seconds = time.perf_counter() - t0
    bar.close()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(res.images):
        io.atomic_write(out / f"result_{i:02d}.png", lambda tmp, img=img: img.save(tmp, format="PNG"))
    io.save_image(out / "grid.png", _sample_grid(res))
    print(f"wrote {len(res.images)} results and grid.png to {out} in {seconds:.1f} s (seed {res.seed})")
    return 0


def _sample_grid(res):
    """One row: input, masked input (hole grey), results; thumbnails at most 256 px high."""
    from PIL import Image

    first = res.images[0]
    w, h = first.size
    scale = min(1.0, 256 / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    masked = res.prepared.image.copy()
    masked[res.prepared.hole] = 128
    tiles = [Image.fromarray(res.prepared.image), Image.fromarray(masked), *res.images]
    tiles = [t.convert("RGB").resize(size, Image.BILINEAR) for t in tiles]
    canvas = Image.new("RGB", (len(tiles) * (size[0] + 2) - 2, size[1]), (255, 255, 255))
    for i, t in enumerate(tiles):
        canvas.paste(t, (i * (size[0] + 2), 0))
    return canvas


def _export(a: argparse.Namespace) -> int:
    from pyinpaint.modelfile import export_runs

    path = export_runs(a.vqvae, a.structure, a.texture, a.out, overwrite=a.overwrite)
    print(f"wrote model {path}")
    return 0


def _convert_official(a: argparse.Namespace) -> int:
    from pyinpaint import io
    from pyinpaint.modelfile import convert_official

    flags = dict(io.load_json(a.config)) if a.config else {}
    if isinstance(flags.get("config"), dict):  # a fixture-style file: {"config": {...flags...}, ...}
        flags = flags["config"]
    if a.image_size:
        flags["image_size"] = a.image_size
    ckpt = a.ckpt[0] if len(a.ckpt) == 1 else a.ckpt
    path = convert_official(ckpt, a.out, flags, overwrite=a.overwrite)
    print(f"wrote model {path}")
    return 0


def _eval_vqvae(a: argparse.Namespace) -> int:
    from pyinpaint.evaluate import eval_vqvae
    from pyinpaint.train.loop import resolve_device

    m = eval_vqvae(a.run, a.data, batch_size=a.batch_size, limit=a.limit, recipe=a.recipe,
                   device=resolve_device(a.device), workers=a.workers, progress=not a.quiet, threads=a.threads)
    if a.json:
        print(json.dumps(m))
    else:
        print(f"images            {m['images']}")
        print(f"reconstruction MSE {m['mse']:.5f}  (scale [-1, 1]; paper Table 3, CelebA-HQ val: 0.0033)")
        print(f"commitment loss   {m['commit']:.5f}")
        print(f"top codebook      {m['use_t']:.1%} of codes used, perplexity {m['ppl_t']:.1f}")
        print(f"bottom codebook   {m['use_b']:.1%} of codes used, perplexity {m['ppl_b']:.1f}")
    return 0


def _eval_inpaint(a: argparse.Namespace) -> int:
    from pyinpaint.evaluate import eval_inpaint, format_summary
    from pyinpaint.train.loop import resolve_device

    baselines = tuple(b.strip() for b in a.baselines.split(",") if b.strip())
    res = eval_inpaint(a.model, a.images, a.masks, n=a.n, size=a.size, limit=a.limit, per_block=a.per_block,
                       seed=a.seed, baselines=baselines, out=a.out, device=resolve_device(a.device),
                       progress=not a.quiet, threads=a.threads)
    print(f"model {res['model']}: {res['cases']} cases, n={a.n}")
    print(format_summary(res["summary"], a.n))
    if a.out:
        print(f"wrote results.csv, summary.csv and best_worst.png to {a.out}")
    return 0


DEMO_CROP = (25, 120, 210)  # top, left, side of the face in skimage.data.astronaut() (512 x 512)


def demo_image():
    """The face of scikit-image's astronaut (public domain), 256 x 256 uint8."""
    from PIL import Image

    try:
        from skimage import data
    except ImportError as e:
        raise RuntimeError("the demo image comes with scikit-image: pip install scikit-image") from e
    top, left, side = DEMO_CROP
    face = Image.fromarray(data.astronaut()[top:top + side, left:left + side])
    return face.resize((256, 256), Image.Resampling.BICUBIC)


def _demo(a: argparse.Namespace) -> int:
    from pyinpaint import io
    from pyinpaint.data import MASK_SPECS, load_mask, make_mask_source
    from pyinpaint.inpainter import Inpainter, default_model
    from pyinpaint.train.loop import resolve_device

    if a.n < 1:
        raise ValueError(f"-n must be at least 1 (got {a.n})")
    image = demo_image()
    if a.mask in MASK_SPECS:
        hole = make_mask_source(a.mask, 256, seed=a.seed).sample(0)[0].numpy() > 0
    else:
        hole = load_mask(a.mask, 256)[0].numpy() > 0
    t0 = time.perf_counter()
    inp = Inpainter.load(a.model or default_model(), device=resolve_device(a.device))
    res = inp.inpaint(image, hole, a.n, seed=a.seed, threads=a.threads)
    seconds = time.perf_counter() - t0
    io.save_image(a.out, _sample_grid(res))
    print(f"wrote {a.out}: original, masked, {a.n} completions ({inp.image_size}px model {inp.model.path}; "
          f"{seconds:.1f} s including loading, seed {res.seed})")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    handlers = {("train", "vqvae"): _train_vqvae, ("eval", "vqvae"): _eval_vqvae,
                ("train", "structure"): _train_structure, ("eval", "structure"): _eval_structure,
                ("train", "texture"): _train_texture,
                ("entropy", None): _entropy, ("sample", None): _sample, ("export", None): _export,
                ("convert-official", None): _convert_official, ("eval", "inpaint"): _eval_inpaint,
                ("demo", None): _demo}
    try:
        return handlers[(a.command, getattr(a, "stage", None))](a)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"pyinpaint: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
