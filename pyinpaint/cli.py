"""The ``pyinpaint`` command: parses arguments, calls the Python API, prints results. No logic of its own.

Exit codes: 0 success, 1 runtime error (one line on stderr; ``pyinpaint --debug ...`` shows the traceback),
2 usage error (argparse's). ``-o/--out`` is where a command writes, ``-q/--quiet`` silences its progress."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from pyinpaint.config import STRUCTURE_PRESETS, TEXTURE_PRESETS, VQVAE_PRESETS


_CONTEXT_HELP = ("what the known region gives the structure: known (default: the codes the known pixels determine are "
                 "taken from the VQ encoder, only the rest drawn) or sampled (every code drawn, the paper's rule)")


def _add_blend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blend", choices=["poisson", "paste"],
                   help="how the fill meets the known pixels: poisson (default: the generator's output with its "
                        "colour corrected to meet the photo at full resolution without a seam; not in the paper's "
                        "pipeline) or paste (the official composite, as generated)")


def _pipeline(a: argparse.Namespace) -> dict:
    """--context and --blend as keywords, only when given (the defaults are the API's)."""
    return {k: getattr(a, k) for k in ("context", "blend") if getattr(a, k, None) is not None}


def _add_train_common(p: argparse.ArgumentParser, *, lr: float, batch_size: int, ema_decay: float = 0.9997) -> None:
    p.add_argument("--data", required=True, help="folder of training images (JPEG/PNG/WebP, searched recursively)")
    p.add_argument("--val-data", help="folder of validation images (validation MSE and image grids at intervals)")
    p.add_argument("-o", "--out", required=True, help="run directory to create (or to continue with --resume); under "
                                                 "torchrun only rank 0 writes it")
    p.add_argument("--steps", type=int, default=1000, help="total training steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"GLOBAL batch size: over all torchrun processes and --accumulate steps (official {batch_size})")
    p.add_argument("--accumulate", type=int, default=1, metavar="K",
                   help="split each process's share of the batch into K micro-batches (gradient accumulation: the "
                        "paper's batch on a small GPU)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision (default fp32 = official; fp16 adds a gradient scaler); codebook search, "
                        "losses, weight-norm / spectral-norm statistics and the EMA stay float32")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) memory format for the trained networks and images (same results up "
                        "to float32 rounding; see docs/benchmarks.md for what it pays)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the trained networks (inductor; the first steps compile, needs a C++ "
                        "compiler on the CPU; same results up to float32 rounding; see docs/benchmarks.md)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to RUN/tensorboard (needs pip install 'pyinpaint[tensorboard]')")
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
    p.add_argument("--keep-best", action="store_true",
                   help="keep the weights of the best validation so far in RUN/best, a run folder of its own (export, "
                        "eval and --init-from take it); texture: hole PSNR, structure: bits/dim, VQ-VAE: MSE")
    p.add_argument("--existing-out", action="store_true",
                   help="train into an existing non-empty --out that is not a run (its files are never deleted)")
    p.add_argument("--init-from", metavar="RUN|MODEL",
                   help="start from the newest weights (model and EMA) of another run of the same stage and "
                        "architecture, or from a model's (a shipped model's name such as faces, or a model folder; "
                        "stages 2-3 then need that model as --vqvae too), with a fresh optimiser at step 0 "
                        "(fine-tuning, e.g. on your own photos or with another --lr)")
    _add_quiet(p)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v < 2 ** 64:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**64), got {v}")
    return v


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where the networks run: cpu, cuda, cuda:N, or auto (default: CUDA when available, else the "
                        "CPU)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress lines (errors and the "
                                                              "final summary still print)")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a shipped model's name (see 'pyinpaint models'; default: faces) or a model "
                                   "directory written by 'pyinpaint export' or 'pyinpaint convert-official'")


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (without it, nothing that exists is "
                                                            "replaced: the command stops before any work)")


def _add_strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default="auto", choices=["auto", "crop", "resize"],
                   help="what the model sees: crop = a square window around each hole (about twice its size, at "
                        "least the model's), resize = the whole image (mirrored to a square, never stretched), "
                        "auto (default) = crop when the image is larger than the model and the windows are smaller "
                        "than the image")


_VQVAE_HELP = ("VQ-VAE run directory (its EMA weights are used, frozen), or a model whose VQ-VAE to use (a shipped "
               "model's name such as faces, or a model folder)")


def _add_batch_images(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--batch-images", type=_positive_int,
                   help=f"most {what} sampled together in one batch (default: as many as fit the memory budget of "
                        f"one batch; 1 = one at a time); each one's samples are the same either way")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, metavar="K",
                   help="CPU threads (default: chosen per call from the work and the machine's load; "
                        "see pyinpaint.threads)")


def build_parser() -> argparse.ArgumentParser:
    from pyinpaint import __version__

    parser = argparse.ArgumentParser(
        prog="pyinpaint",
        description="Diverse image inpainting with a hierarchical VQ-VAE (Peng et al., CVPR 2021). Exit codes: 0 "
                    "success, 1 runtime error (one line; --debug for the traceback), 2 usage error.")
    parser.add_argument("--version", action="version", version=f"pyinpaint {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
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
    ts.add_argument("--vqvae", required=True, help=_VQVAE_HELP)
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
    tt.add_argument("--vqvae", required=True, help=_VQVAE_HELP)
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
    evv.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default 16)")
    evv.add_argument("--limit", type=_positive_int, help="evaluate the first N images only")
    evv.add_argument("--recipe", default="resize", choices=["resize", "center-crop"],
                     help="evaluation preprocessing (default resize, as the official validation)")
    _add_device(evv)
    evv.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    evv.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_quiet(evv)
    _add_threads(evv)

    evs = esub.add_parser("structure", help="NLL (bits/dim) of a structure-generator run",
                          description="Negative log-likelihood of the true top codes in bits per dimension with the "
                                      "run's EMA weights (paper Table 3: about 1.24 on CelebA-HQ val, random masks).")
    evs.add_argument("run", help="run directory written by 'pyinpaint train structure'")
    evs.add_argument("--data", required=True, help="folder of images to evaluate on")
    evs.add_argument("--masks", default="protocol", help="masks (default protocol: seeded, the same every time)")
    evs.add_argument("--seed", type=_seed, default=0, help="seed of the masks (default 0)")
    evs.add_argument("--batch-size", type=_positive_int, default=16, help="images per batch (default 16)")
    evs.add_argument("--limit", type=_positive_int, help="evaluate the first N images only")
    _add_device(evs)
    evs.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    evs.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_quiet(evs)
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
    _add_model(evi)
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
    evi.add_argument("--upscale", type=int, default=1,
                     help="then enlarge the images this many times (bicubic) and make the masks at that size: "
                          "large photos with known detail (default 1)")
    _add_strategy(evi)
    evi.add_argument("--seed", type=int, default=0, help="seed of the mask choice and of the samples")
    evi.add_argument("--context", help=_CONTEXT_HELP)
    _add_blend(evi)
    evi.add_argument("--baselines", default="telea,ns,mean",
                     help="comma-separated baselines: telea, ns (OpenCV), mean (default all three; '' for none)")
    evi.add_argument("-o", "--out", help="folder for results.csv, summary.csv and best_worst.png")
    _add_overwrite(evi, "results.csv, summary.csv and best_worst.png in --out")
    _add_batch_images(evi, "cases")
    _add_device(evi)
    _add_quiet(evi)
    _add_threads(evi)

    de = sub.add_parser("demo", help="inpaint a face that ships with pyinpaint: no files needed",
                        description="Fill a generated hole in the astronaut portrait that ships with pyinpaint (Eileen "
                                    "Collins, NASA, public domain; scikit-image's astronaut) n times with the default model (or --model) and write a grid: "
                                    "original, masked, the n completions.")
    de.add_argument("-o", "--out", default="pyinpaint-demo.png", help="output PNG (default pyinpaint-demo.png)")
    de.add_argument("-n", type=_positive_int, default=6, help="number of completions (default 6)")
    de.add_argument("--mask", default="center",
                    help="center (default), box, stroke, random, or a mask file for the 256x256 face")
    _add_model(de)
    de.add_argument("--seed", type=_seed, default=0, help="seed of the samples and of a generated mask (default 0)")
    _add_strategy(de)
    _add_blend(de)
    _add_overwrite(de, "an existing output PNG")
    _add_device(de)
    _add_quiet(de)
    _add_threads(de)

    sa = sub.add_parser("sample", help="inpaint images: n diverse completions of each hole",
                        description="Fill the hole of each image n times with a trained model and write the results "
                                    "as PNGs at the image's size, NAME_00.png ... (NAME: the image's file name "
                                    "without extension), and NAME_grid.png (input, masked input, results). Every "
                                    "input, option and the output folder are checked before any model work; nothing "
                                    "in -o is replaced without --overwrite.")
    sa.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="IMAGE MASK [IMAGE MASK ...], or IMAGE_FOLDER MASK_FOLDER (paired by file name without "
                         "extension, e.g. a.jpg with a.png). Images of any size; masks of the image's size, nonzero / "
                         "white = the hole to fill")
    sa.add_argument("-n", type=_positive_int, default=10, help="completions per image (default 10), drawn in "
                                                                "batches that fit memory")
    sa.add_argument("-o", "--out", required=True, help="output folder (created if needed)")
    _add_model(sa)
    sa.add_argument("--seed", type=_seed, help="seed, in [0, 2**64): the same seed gives the same images (default: a "
                                               "fresh one, printed; the same for every image of the run)")
    sa.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature in [0.001, 1000] (default 1 = official); lower = likelier structures")
    sa.add_argument("--top-k", type=_positive_int,
                    help="sample among the k likeliest codes only (default: all = official)")
    sa.add_argument("--sampler", default="cached", choices=["cached", "naive", "graph"],
                    help="structure sampler: cached (default; incremental, fast), naive (the paper's: the whole "
                         "network per position) or graph (cached, replayed from a CUDA graph; CUDA only); all draw "
                         "the same codes for a seed")
    sa.add_argument("--context", help=_CONTEXT_HELP)
    _add_blend(sa)
    sa.add_argument("--rank", action="store_true", help="order the results by discriminator score, best first")
    sa.add_argument("--invert-mask", action="store_true",
                    help="the masks mark the hole with 0 / black instead (white = keep)")
    _add_overwrite(sa, "existing results in --out and remove older results of the same images beyond n")
    sa.add_argument("--skip-existing", action="store_true",
                    help="skip images whose n results already exist in --out (resume a long folder run); the "
                         "partial results of the others are replaced")
    sa.add_argument("--max-pixels", type=_positive_int,
                    help="largest image accepted, in pixels (default 100000000, or PYINPAINT_MAX_PIXELS)")
    _add_batch_images(sa, "images")
    _add_strategy(sa)
    _add_device(sa)
    _add_quiet(sa)
    _add_threads(sa)

    mo = sub.add_parser("models", help="list the models shipped with pyinpaint",
                        description="The models shipped inside the package, usable by name (--model NAME, "
                                    "Inpainter.load(NAME), sample(..., model=NAME)): name, image size, size on disk, "
                                    "what it was trained on, folder.")
    mo.add_argument("--json", action="store_true", help="print the list as JSON")

    ma = sub.add_parser("masks", help="write seeded mask files to try pyinpaint on your own photos",
                        description="Write N mask files (PNG, 255 = hole, 0 = keep) drawn from the package's "
                                    "generators, seeded (the same seed gives the same files): KIND_00.png ...")
    ma.add_argument("kind", choices=["box", "stroke", "random", "protocol", "center", "center-box"],
                    help="box (random rectangles), stroke (free-form brush strokes), random (either, as in "
                         "training), protocol (the evaluation protocol's masks), center (a centred square), "
                         "center-box (a centred box of random size)")
    ma.add_argument("-o", "--out", required=True, help="output folder (created if needed)")
    ma.add_argument("-n", type=_positive_int, default=10, help="number of masks (default 10)")
    size = ma.add_mutually_exclusive_group()
    size.add_argument("--size", default="256", help="mask size: N (square) or WIDTHxHEIGHT, e.g. 640x480 (default "
                                                     "256)")
    size.add_argument("--like", metavar="IMAGE", help="the size of this image (as displayed: EXIF orientation applied)")
    ma.add_argument("--seed", type=_seed, default=0, help="seed of the masks (default 0)")
    _add_overwrite(ma, "existing mask files of the same names")
    _add_quiet(ma)

    ex = sub.add_parser("export", help="assemble a model directory from three training runs",
                        description="Assemble a model (config.json + model.safetensors + model card) from the runs of "
                                    "the three stages, with the weights the official pipeline uses (EMA for stages "
                                    "1-2); stages without a run come from --base.")
    ex.add_argument("--vqvae", help="VQ-VAE run (default: the copy kept inside the structure run, else the texture "
                                    "run's, else --base's)")
    ex.add_argument("--structure", help="structure-generator run (default: --base's)")
    ex.add_argument("--texture", help="texture-generator run (default: --base's)")
    ex.add_argument("--base", metavar="MODEL",
                    help="a model (a shipped model's name such as faces, or a model folder) giving the stages no run "
                         "is given for, e.g. after fine-tuning one stage with --init-from MODEL")
    ex.add_argument("-o", "--out", required=True, help="model directory to write")
    _add_overwrite(ex, "the model files (config.json, model.safetensors, README.md) in an existing --out")
    _add_quiet(ex)

    co = sub.add_parser("convert-official", help="convert the authors' TensorFlow checkpoint to a model directory",
                        description="Read an official DSI TensorFlow checkpoint (the .index + .data pair; no TensorFlow "
                                    "needed), infer the widths from the variable shapes, take the rest from the "
                                    "official flags, and write a pyinpaint model directory.")
    co.add_argument("ckpt", nargs="+", help="checkpoint prefix, .index file or folder (several stage checkpoints allowed)")
    co.add_argument("-o", "--out", required=True, help="model directory to write")
    co.add_argument("--config", help="JSON file of the official flags (argparse names of test.py), e.g. image_size")
    co.add_argument("--image-size", type=_positive_int, help="the model's image size (official flag image_size, e.g. 256)")
    _add_overwrite(co, "the model files (config.json, model.safetensors, README.md) in an existing --out")
    _add_quiet(co)

    en = sub.add_parser("entropy", help="entropy map of the structure distribution for a masked image",
                        description="Sample one structure for IMAGE with hole MASK and save, side by side: the "
                                    "masked image, the per-position entropy (bits, 0 to log2 K) of the predicted "
                                    "code distribution along the sampled structure, and the decoded structure "
                                    "(the paper's Figure 9).")
    en.add_argument("model", metavar="MODEL",
                    help="a shipped model's name (faces), a model directory or a structure training run")
    en.add_argument("image", help="image file")
    en.add_argument("mask", help="mask file (nonzero = hole), or center / random / protocol")
    en.add_argument("-o", "--out", required=True, help="output PNG")
    en.add_argument("--seed", type=_seed, default=0, help="seed of the sampled structure and of a generated mask")
    en.add_argument("--invert-mask", action="store_true", help="the mask file marks the hole with 0")
    _add_overwrite(en, "an existing output PNG")
    _add_device(en)
    _add_quiet(en)

    se = sub.add_parser("serve", help="a page in the browser: paint a hole, browse n fills (the serve extra)",
                        description="Start a local web server with a page to open a photo, paint the hole (or load a "
                                    "mask), and browse, compare and download n diverse fills. Needs the serve extra: "
                                    "pip install \"pyinpaint[serve]\". One model per name is loaded once; one sampling "
                                    "runs at a time, the others wait in a queue.")
    _add_model(se)
    se.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1, this machine only; there is no login)")
    se.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    _add_device(se)
    se.add_argument("--max-upload-mb", type=float, default=20, help="largest request body, MB (default 20)")
    se.add_argument("--max-side", type=int, default=4096, help="largest image width or height, pixels (default 4096)")
    se.add_argument("--max-n", type=int, default=32, help="most fills per request (default 32)")
    return parser


def _train_args(a: argparse.Namespace) -> dict:
    return dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, device=a.device,
                ema_decay=a.ema_decay, ema_warmup=a.ema_warmup, log_every=a.log_every, val_every=a.val_every,
                init_from=a.init_from, val_batches=a.val_batches, ckpt_every=a.ckpt_every, workers=a.workers,
                accumulate=a.accumulate, precision=a.precision, tensorboard=a.tensorboard,
                channels_last=a.channels_last, compile=a.compile,
                existing_out=a.existing_out, keep_best=a.keep_best, val_data=a.val_data, recipe=a.recipe,
                resume=a.resume,
                progress=not a.quiet)


def _print_final(last: dict) -> int:
    import os

    if last and int(os.environ.get("RANK", "0")) == 0:
        print("final: " + ", ".join(f"{k} {v:.5g}" for k, v in last.items()))
    return 0


def _train_vqvae(a: argparse.Namespace) -> int:
    from pyinpaint.train.stages import train_vqvae

    return _print_final(train_vqvae(a.data, a.out, config=a.config, image_size=a.image_size, **_train_args(a)))


def _train_structure(a: argparse.Namespace) -> int:
    from pyinpaint.train.stages import train_structure

    return _print_final(train_structure(a.data, a.out, a.vqvae, config=a.config, masks=a.masks,
                                        val_masks=a.val_masks, warmup=a.warmup, dropout=a.dropout,
                                        **_train_args(a)))


def _train_texture(a: argparse.Namespace) -> int:
    from pyinpaint.train.stages import train_texture

    return _print_final(train_texture(a.data, a.out, a.vqvae, config=a.config, masks=a.masks,
                                      val_masks=a.val_masks, feature_weight=a.feature_weight, **_train_args(a)))


def _eval_structure(a: argparse.Namespace) -> int:
    from pyinpaint.evaluate import eval_structure
    from pyinpaint.inpainter import resolve_device

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
    from pyinpaint.inpainter import resolve_device

    if Path(a.out).exists() and not a.overwrite:
        raise FileExistsError(f"{a.out} already exists: pass --overwrite to replace it, or choose another -o/--out")
    info = entropy_map(a.model, a.image, a.mask, a.out, seed=a.seed, invert_mask=a.invert_mask,
                       device=resolve_device(a.device))
    print(f"wrote {a.out}: mean entropy {info['mean_bits']:.2f} bits in the hole, {info['mean_bits_known']:.2f} "
          f"outside (max {info['max_bits']:.2f})")
    return 0


def _progress_bar(total: int, quiet: bool):
    """A tqdm bar over ``total`` images on a terminal; None when quiet or stderr is not a terminal (logs)."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.2f}/{total_fmt} images [{elapsed}<{remaining}]")


def _sample(a: argparse.Namespace) -> int:
    from pyinpaint import io

    limit = io.MAX_PIXELS
    try:
        if a.max_pixels:
            io.MAX_PIXELS = a.max_pixels
        return _sample_files(a)
    finally:
        io.MAX_PIXELS = limit


def _sample_files(a: argparse.Namespace) -> int:
    from pyinpaint import io
    from pyinpaint.inpainter import Inpainter, model_path, resolve_device

    # Every check before any model work: inputs paired, output folder, device, options, then each input read.
    pairs = io.pair_inputs(a.inputs)
    plan = io.plan_outputs(a.out, [p.name for p in pairs], a.n, overwrite=a.overwrite, skip_existing=a.skip_existing)
    todo = [p for p in pairs if plan.todo(p.name)]
    device = resolve_device(a.device)
    inp = Inpainter.load(model_path(a.model), device=device)
    seed = inp.check_options(a.n, seed=a.seed, temperature=a.temperature, top_k=a.top_k, sampler=a.sampler,
                             rank=a.rank, **_pipeline(a))
    for p in todo:
        io.read_pair(p.image, p.mask, a.invert_mask)  # raises on a bad input; its warnings print once, here
    if plan.summary() and not a.quiet:
        print(f"pyinpaint: {plan.out}: {plan.summary()}", file=sys.stderr)
    bar = _progress_bar(len(todo), a.quiet)
    replace = set(plan.replace)

    def progress(done: float, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)  # redrawn at most every 0.1 s

    t0 = t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", io.InpaintWarning)  # already shown by the check above
        results = inp.inpaint_many([(p.image, p.mask) for p in todo], a.n, seed=seed, temperature=a.temperature,
                                   top_k=a.top_k, sampler=a.sampler, rank=a.rank, invert=a.invert_mask,
                                   strategy=a.strategy, progress=progress, threads=a.threads,
                                   batch_images=a.batch_images, **_pipeline(a))
        for i, (p, res) in enumerate(zip(todo, results)):  # each image written as soon as its batch is done
            files = plan.files[p.name]
            for old in plan.remove.get(p.name, []):
                old.unlink(missing_ok=True)
            for img, f in zip([*res.images, _sample_grid(res)], files):
                io.save_image(f, img, overwrite=f in replace)
            if bar is not None:
                bar.update(max(0.0, i + 1 - bar.n))
            elif not a.quiet and len(todo) > 1:
                now = time.perf_counter()
                print(f"[{i + 1}/{len(todo)}] {p.image}: {a.n} results ({now - t1:.1f} s)", file=sys.stderr)
                t1 = now
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if len(pairs) == 1 and todo:
        names = plan.files[pairs[0].name]
        results = names[0].name if a.n == 1 else f"{names[0].name} ... {names[-2].name}"
        print(f"wrote {results} and {names[-1].name} to {plan.out} in {seconds:.1f} s (seed {seed})")
    else:
        print(f"wrote {a.n} results and a grid for each of {len(todo)} image(s) to {plan.out} in {seconds:.1f} s"
              f"{f', skipped {len(plan.skip)}' if plan.skip else ''} (seed {seed})")
    return 0


def _models(a: argparse.Namespace) -> int:
    from pyinpaint.inpainter import shipped_models

    models = shipped_models()
    if a.json:
        print(json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in m.items()} for m in models], indent=2))
        return 0
    for m in models:
        if m.get("missing"):
            print(f"{m['name']:<8} missing from this installation ({m['path']})")
            continue
        print(f"{m['name']:<8} {m['image_size']} px, {m['megabytes']:.0f} MB{', default' if m['default'] else ''}: "
              f"{m['trained_on']} ({m['path']})")
    return 0


def _masks(a: argparse.Namespace) -> int:
    from PIL import Image

    from pyinpaint import io
    from pyinpaint.masks import make_mask_source

    if a.like:
        width, height = Image.fromarray(io.read_image(a.like)[:, :, 0]).size
    else:
        try:
            width, height = (int(v) for v in a.size.lower().split("x")) if "x" in a.size.lower() else [int(a.size)] * 2
        except ValueError:
            raise ValueError(f"--size must be N or WIDTHxHEIGHT (e.g. 640x480), got {a.size!r}") from None
        if width < 1 or height < 1:
            raise ValueError(f"--size must be positive, got {a.size!r}")
        io.check_pixels(width, height, "--size")
    plan = io.plan_outputs(a.out, [a.kind], a.n, overwrite=a.overwrite, grid=False)
    source = make_mask_source(a.kind, (height, width), seed=a.seed)
    replace = set(plan.replace)
    for old in plan.remove.get(a.kind, []):
        old.unlink(missing_ok=True)
    for i, f in enumerate(plan.files[a.kind]):
        hole = source.sample(i)[0].numpy() > 0
        io.save_image(f, Image.fromarray(hole.astype("uint8") * 255, "L"), overwrite=f in replace)
    files = plan.files[a.kind]
    print(f"wrote {files[0].name} ... {files[-1].name} ({width}x{height}, 255 = hole, seed {a.seed}) to {plan.out}")
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

    path = export_runs(a.vqvae, a.structure, a.texture, a.out, base=a.base, overwrite=a.overwrite)
    print(f"wrote model {path}")
    return 0


def _convert_official(a: argparse.Namespace) -> int:
    from pyinpaint import io
    from pyinpaint.official import convert_official

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
    from pyinpaint.inpainter import resolve_device

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
    from pyinpaint.inpainter import resolve_device

    baselines = tuple(b.strip() for b in a.baselines.split(",") if b.strip())
    res = eval_inpaint(a.model, a.images, a.masks, n=a.n, size=a.size, limit=a.limit, per_block=a.per_block,
                       seed=a.seed, baselines=baselines, strategy=a.strategy, upscale=a.upscale, out=a.out,
                       overwrite=a.overwrite, device=resolve_device(a.device), progress=not a.quiet,
                       threads=a.threads, batch_images=a.batch_images, **_pipeline(a))
    print(f"model {res['model']}: {res['cases']} cases at {res['size']} px, n={a.n}, strategy {a.strategy}, "
          f"blend {res['blend']}")
    print(format_summary(res["summary"], a.n))
    if a.out:
        print(f"wrote results.csv, summary.csv and best_worst.png to {a.out}")
    return 0


DEMO_IMAGE = Path(__file__).parent / "assets" / "astronaut-face.png"  # public domain, see assets/README.md


def demo_image():
    """The demo photo that ships with pyinpaint: the face of scikit-image's astronaut (Eileen Collins, NASA, public
    domain), 256 x 256 RGB."""
    from PIL import Image

    try:
        with Image.open(DEMO_IMAGE) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"the demo photo is missing from this installation ({DEMO_IMAGE}): reinstall "
                                "pyinpaint") from None


def _demo(a: argparse.Namespace) -> int:
    from pyinpaint import io
    from pyinpaint.masks import MASK_SPECS, load_mask, make_mask_source
    from pyinpaint.inpainter import Inpainter, resolve_device

    if Path(a.out).exists() and not a.overwrite:
        raise FileExistsError(f"{a.out} exists: pass --overwrite to replace it, or -o another file")
    image = demo_image()
    if a.mask in MASK_SPECS:
        hole = make_mask_source(a.mask, 256, seed=a.seed).sample(0)[0].numpy() > 0
    else:
        hole = load_mask(a.mask, 256)[0].numpy() > 0
    t0 = time.perf_counter()
    inp = Inpainter.load(a.model, device=resolve_device(a.device))
    res = inp.inpaint(image, hole, a.n, seed=a.seed, strategy=a.strategy, threads=a.threads, **_pipeline(a))
    seconds = time.perf_counter() - t0
    io.save_image(a.out, _sample_grid(res), overwrite=a.overwrite)
    print(f"wrote {a.out}: original, masked, {a.n} completions ({inp.image_size}px model {inp.model.path}; "
          f"{seconds:.1f} s including loading, seed {res.seed})")
    return 0


def _serve(a: argparse.Namespace) -> int:
    from pyinpaint.serve import Limits, serve

    if a.max_upload_mb <= 0 or a.max_side < 1 or a.max_n < 1:
        raise ValueError("--max-upload-mb, --max-side and --max-n must be positive")
    serve(a.model, host=a.host, port=a.port, device=None if a.device == "auto" else a.device,
          limits=Limits(max_upload_bytes=int(a.max_upload_mb * 2 ** 20), max_side=a.max_side, max_n=a.max_n))
    return 0


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (ValueError, OSError, KeyError)):
        return msg
    return f"{type(e).__name__}: {msg} (run 'pyinpaint --debug ...' for the traceback)"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pyinpaint: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 itself on usage errors)."""
    a = build_parser().parse_args(argv)
    handlers = {("train", "vqvae"): _train_vqvae, ("eval", "vqvae"): _eval_vqvae,
                ("train", "structure"): _train_structure, ("eval", "structure"): _eval_structure,
                ("train", "texture"): _train_texture, ("models", None): _models, ("masks", None): _masks,
                ("entropy", None): _entropy, ("sample", None): _sample, ("export", None): _export,
                ("convert-official", None): _convert_official, ("eval", "inpaint"): _eval_inpaint,
                ("demo", None): _demo, ("serve", None): _serve}
    try:
        with warnings.catch_warnings():
            if not a.debug:
                warnings.showwarning = _show_warning  # one line per warning, no source excerpt
            return handlers[(a.command, getattr(a, "stage", None))](a)
    except KeyboardInterrupt:
        print("pyinpaint: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if a.debug:
            raise
        print(f"pyinpaint: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
