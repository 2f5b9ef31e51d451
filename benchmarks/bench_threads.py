"""Threads under load: one ``Inpainter.sample`` call with threads chosen per call (the default) vs 1 vs 2 threads,
on an idle machine and with one busy process per core; then two processes sampling at once.

    OMP_NUM_THREADS= python benchmarks/bench_threads.py            # about 10-15 minutes on 2 loaded cores
    python benchmarks/bench_threads.py --models shipped --cap 20   # a shorter run
    python benchmarks/bench_threads.py --models shipped --settings default,1 --repeat 3 --no-concurrency

A script, not a pytest-benchmark file: it starts and stops its own busy processes (each a bounded
``while time.time() < deadline`` loop, one per core, stopped when the case ends and in any case after
``--cap`` + 60 s). Models: "shipped" (the faces model in the package, 128 px) and "paper" (the paper's
configuration at 256 px, random weights: the cost does not depend on them). Each call fills a centre hole of a
256 x 256 image, n = 1 and n = 10, seed 0. A call still running after ``--cap`` seconds is stopped (from its progress
callback) and reported as "> cap". The machine's load (``/proc/loadavg``) is printed before and after each block:
figures from a machine that other work shares are noisy; compare the columns of one run.

Then the concurrency check: two processes (this script with ``--one``) start the same call at the same moment;
each one's time is compared with the same call alone (default threads), and with their share of the cores.
Results go to stdout as a table and, with ``--json PATH``, as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

BUSY = "import time\nt = time.time() + {seconds}\nwhile time.time() < t:\n    pass\n"


class Stopped(Exception):
    pass


def load(name: str):
    from pyinpaint.inpainter import Inpainter, default_model

    if name == "shipped":
        return Inpainter.load(default_model(), "cpu")
    from pyinpaint.config import structure_preset, texture_preset, vqvae_preset
    from pyinpaint.modelfile import Model
    from pyinpaint.models.structure import StructureGenerator
    from pyinpaint.models.texture import TextureGenerator
    from pyinpaint.models.vqvae import VQVAE

    torch.manual_seed(0)
    return Inpainter(Model(VQVAE(vqvae_preset("paper")), StructureGenerator(structure_preset("paper")),
                           TextureGenerator(texture_preset("paper"))), "cpu")


def case():
    from skimage import data

    image = np.ascontiguousarray(data.astronaut()[25:281, 120:376])
    hole = np.zeros(image.shape[:2], bool)
    hole[64:192, 64:192] = True
    return image, hole


def timed(inp, n: int, threads: int | None, cap: float) -> tuple[float, bool, list[int]]:
    """(seconds, finished, thread counts used) of one sample call; stopped after ``cap`` seconds."""
    import pyinpaint.threads as th

    image, hole = case()
    t0 = time.perf_counter()
    used: list[int] = []
    real = th.Threads.__init__

    def spy(self, *a, **k):  # record the counts the call chose
        real(self, *a, **k)
        used.append(self)

    def progress(done, total):
        if time.perf_counter() - t0 > cap:
            raise Stopped

    th.Threads.__init__ = spy
    try:
        inp.sample(image, hole, n, seed=0, threads=threads, progress=progress)
        finished = True
    except Stopped:
        finished = False
    finally:
        th.Threads.__init__ = real
    seconds = time.perf_counter() - t0
    return seconds, finished, [k for t in used for k in t.history]


def busy(cores: int, seconds: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)]) for _ in range(cores)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:4])
    except OSError:
        return "unknown"


def fmt(sec: float, finished: bool) -> str:
    return f"{sec:.2f}" if finished else f">{sec:.0f}"


def one(args) -> None:
    """--one MODEL N START: load, wait for the wall-clock START, run one call with default threads, print JSON."""
    inp = load(args.one[0])
    timed(inp, 1, 1, args.cap)  # warm-up (first-call costs) before the common start
    start = float(args.one[2])
    while time.time() < start:
        time.sleep(0.01)
    sec, finished, used = timed(inp, int(args.one[1]), None, args.cap)
    print(json.dumps({"seconds": sec, "finished": finished, "threads": used}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="shipped,paper")
    ap.add_argument("--ns", default="1,10")
    ap.add_argument("--cap", type=float, default=40.0, help="seconds after which a call is stopped (default 40)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "N", "START"), help=argparse.SUPPRESS)
    ap.add_argument("--settings", default="default,1,2", help="thread settings compared (default: default,1,2)")
    ap.add_argument("--loads", default="idle,loaded", help="idle, loaded or both (default)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each setting, interleaved; the fastest is kept")
    ap.add_argument("--no-concurrency", action="store_true")
    args = ap.parse_args()
    if args.one:
        return one(args)
    from pyinpaint.threads import available_cores

    cores = available_cores()
    settings = args.settings.split(",")
    if "default" not in settings:
        settings.insert(0, "default")
    print(f"torch {torch.__version__}, {cores} cores, torch default threads {torch.get_num_threads()}", flush=True)
    results = []
    for name in args.models.split(","):
        inp = load(name)
        timed(inp, 1, 1, args.cap)  # warm-up
        for load_kind in args.loads.split(","):
            print(f"\n{name}, {load_kind}: load before {loadavg()}", flush=True)
            for n in (int(x) for x in args.ns.split(",")):
                row = {"model": name, "load": load_kind, "n": n}
                for _ in range(args.repeat):  # interleaved; the fastest of each setting is kept
                    for label in settings:
                        procs = busy(cores, args.cap + 60) if load_kind == "loaded" else []
                        try:
                            time.sleep(0.5 if procs else 0)
                            sec, finished, used = timed(inp, n, None if label == "default" else int(label), args.cap)
                        finally:
                            stop(procs)
                        if label not in row or sec < row[label]["seconds"]:
                            row[label] = {"seconds": sec, "finished": finished, "threads": used}
                best = min(v["seconds"] for k, v in row.items() if k in settings)
                row["default_vs_best"] = row["default"]["seconds"] / best  # '>' when the default was stopped
                results.append(row)
                cols = "  ".join(f"{k if k == 'default' else k + ' thr'} {fmt(row[k]['seconds'], row[k]['finished'])} s"
                                 + (f" (threads used {row[k]['threads']})" if k == "default" else "") for k in settings)
                print(f"  n={n:3d}  {cols}  default/best {'' if row['default']['finished'] else '>'}"
                      f"{row['default_vs_best']:.2f}", flush=True)
            print(f"  load after {loadavg()}", flush=True)
        del inp
    if not args.no_concurrency:
        for name in args.models.split(","):
            n = 10
            inp = load(name)
            timed(inp, 1, 1, args.cap)
            alone, fin_alone, used_alone = timed(inp, n, None, args.cap)
            del inp
            print(f"\ntwo processes at once, {name}, n={n}: load before {loadavg()}", flush=True)
            start = time.time() + 25.0 + (60.0 if name == "paper" else 0.0)
            cmd = [sys.executable, __file__, "--cap", str(args.cap), "--one", name, str(n), str(start)]
            procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            secs = [o["seconds"] for o in outs]
            row = {"model": name, "n": n, "alone": alone, "alone_threads": used_alone, "together": outs}
            results.append(row)
            print(f"  alone {fmt(alone, fin_alone)} s (threads {used_alone}); together "
                  f"{', '.join(fmt(o['seconds'], o['finished']) + ' s (threads ' + str(o['threads']) + ')' for o in outs)}"
                  f"; slow-down {max(secs) / alone:.2f}x (each process's share of the {cores} cores: "
                  f"{cores / 2:g}; fair: at most {max(1.0, 2 / cores * max(used_alone or [1])):.2f}x)"
                  f"; load after {loadavg()}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
