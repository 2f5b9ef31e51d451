"""The one model format: a directory that holds the three networks of a complete inpainting model.

Layout::

    MODEL/config.json        {"format": "pyinpaint-model", "version": 1,
                              "vqvae": {...}, "structure": {...}, "texture": {...}, "source": {...}}
    MODEL/model.safetensors  vqvae.*          the VQ-VAE (its top codebook turns sampled codes into structure maps;
                                              the decoder draws structures for grids)
                             structure.*      the structure generator (condition network + PixelCNN)
                             texture.*        the texture generator
                             discriminator.*  optional: the SN-PatchGAN discriminator (ranks samples)
    MODEL/README.md          optional model card (informative only, never read back)

The config sections are the ``to_dict`` of :class:`~pyinpaint.config.VQVAEConfig`,
:class:`~pyinpaint.config.StructureConfig` and :class:`~pyinpaint.config.TextureConfig`; ``source`` is free-form
provenance; the safetensors metadata holds a SHA-256 of the tensors (:func:`digest`). :func:`load_model` is the one
reader (it checks everything before the networks take memory; errors are ``FileNotFoundError`` or
:class:`ModelFileError`); :func:`save_model` the one writer, used by :func:`export_runs` (three training runs) and
:func:`pyinpaint.official.convert_official` (an official TensorFlow checkpoint). Nothing here unpickles.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from pyinpaint import io
from pyinpaint.config import StructureConfig, TextureConfig, VQVAEConfig, from_dict, to_dict
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.texture import Discriminator, TextureGenerator
from pyinpaint.models.vqvae import VQVAE

FORMAT = "pyinpaint-model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
SECTIONS = ("vqvae", "structure", "texture", "discriminator")  # tensor-name prefixes; discriminator optional

PathLike = str | os.PathLike


@dataclass
class Model:
    """A loaded model: the networks (in eval mode, on one device) and where they came from."""

    vqvae: VQVAE
    structure: StructureGenerator
    generator: TextureGenerator
    discriminator: Discriminator | None = None
    source: Any = None
    path: Path | None = None

    @property
    def image_size(self) -> int:
        return self.vqvae.cfg.image_size

    @property
    def codebook(self) -> torch.Tensor:
        """The top-level codebook [K, D]: sampled code k becomes the structure vector ``codebook[k]``."""
        return self.vqvae.encoder.vq_t.embedding

    @property
    def configs(self) -> dict[str, Any]:
        return {"vqvae": self.vqvae.cfg, "structure": self.structure.cfg, "texture": self.generator.cfg}

    def to(self, device: str | torch.device) -> "Model":
        for m in (self.vqvae, self.structure, self.generator, self.discriminator):
            if m is not None:
                m.to(device)
        return self


def check_configs(vqvae: VQVAEConfig, structure: StructureConfig, texture: TextureConfig) -> None:
    """Raise ValueError listing every way the three configs fail to form one model."""
    problems = []
    sizes = (vqvae.image_size, structure.image_size, texture.image_size)
    if len(set(sizes)) > 1:
        problems.append(f"image_size differs (vqvae {sizes[0]}, structure {sizes[1]}, texture {sizes[2]})")
    dims = (vqvae.embedding_dim, structure.embedding_dim, texture.embedding_dim)
    if len(set(dims)) > 1:
        problems.append(f"embedding_dim differs (vqvae {dims[0]}, structure {dims[1]}, texture {dims[2]})")
    if structure.num_embeddings != vqvae.num_embeddings:
        problems.append(f"num_embeddings differs (vqvae {vqvae.num_embeddings}, structure {structure.num_embeddings}): "
                        "the PixelCNN's classes must be the codes of the VQ-VAE's top codebook")
    if problems:
        raise ValueError("inconsistent model configs: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------------ writing
def _card(configs: dict[str, Any], source: Any, has_discriminator: bool, counts: dict[str, int]) -> str:
    vq, st, tx = configs["vqvae"], configs["structure"], configs["texture"]
    lines = [
        "# pyinpaint model",
        "",
        "Diverse image inpainting (DSI, Peng et al., CVPR 2021): a hierarchical VQ-VAE, a PixelCNN structure",
        "generator and a texture generator, in pyinpaint's model format (`config.json` + `model.safetensors`).",
        "",
        f"- image size: {vq['image_size']} px (inputs of any size are resized to it; known pixels are kept exactly)",
        f"- structure map: {vq['image_size'] // 8}x{vq['image_size'] // 8} codes from {vq['num_embeddings']} "
        f"(dimension {vq['embedding_dim']})",
        f"- PixelCNN: {st['channels']} channels, {st['resnets']} resnet pairs, {st['attention']} attention blocks "
        f"of {st['heads']} heads",
        f"- texture generator: {tx['channels']} channels; discriminator (ranking): "
        f"{'included' if has_discriminator else 'not included'}",
        "- parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()),
        "",
        "```python",
        "from pyinpaint.inpainter import Inpainter",
        "images = Inpainter.load('THIS_DIRECTORY').sample('image.png', 'mask.png', n=10, seed=0)",
        "```",
        "",
        "## Source",
        "",
        "```json",
        json.dumps(source, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def save_model(path: PathLike, vqvae: VQVAE, structure: StructureGenerator, generator: TextureGenerator,
               discriminator: Discriminator | None = None, source: Any = None, *, card: str | bool = True,
               overwrite: bool = False) -> Path:
    """Write a model directory (see the module docstring). Returns its path.

    ``source`` is free-form provenance (JSON-serialisable). ``card``: True writes a generated README.md model
    card, a string writes that text, False writes none. An existing model there is replaced only with
    ``overwrite``. Each file is written atomically; config.json is written after the weights.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    taken = [name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE if card else None)
             if name and (path / name).exists()]
    if not overwrite and taken:
        raise FileExistsError(f"{path} already holds {', '.join(taken)}: pass overwrite=True (--overwrite) to replace "
                              "them, or choose another folder")
    tx = generator.cfg
    if discriminator is not None and discriminator.cfg.dis_channels != tx.dis_channels:
        tx = dataclasses.replace(tx, dis_channels=discriminator.cfg.dis_channels)
    check_configs(vqvae.cfg, structure.cfg, tx)
    modules = {"vqvae": vqvae, "structure": structure, "texture": generator}
    if discriminator is not None:
        modules["discriminator"] = discriminator
    tensors = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    configs = {"vqvae": to_dict(vqvae.cfg), "structure": to_dict(structure.cfg), "texture": to_dict(tx)}
    config = {"format": FORMAT, "version": VERSION, **configs, "source": source}
    path.mkdir(parents=True, exist_ok=True)
    io.save_tensors(path / WEIGHTS_FILE, tensors,
                    metadata={"format": FORMAT, "version": str(VERSION), "sha256": digest(tensors)})
    io.save_json(path / CONFIG_FILE, config)
    if card:
        text = card if isinstance(card, str) else _card(
            configs, source, discriminator is not None,
            {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()})
        io.atomic_write(path / CARD_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


# ------------------------------------------------------------------------------------------------ reading
class ModelFileError(ValueError):
    """A model directory is malformed, inconsistent or corrupt (the message names the file and the key)."""


MAX_CONFIG_BYTES = 1 << 20  # config.json holds three small sections and the provenance
_KEYS = ("format", "version", "vqvae", "structure", "texture", "source")
# safetensors dtype names: the floating ones load into float32 parameters, the integer ones into int64 counters
_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_INTS = {"I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8}


def _model_dir(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
        path = path.parent  # a file of the model: take its directory
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelFileError(f"{path} is a file, not a model directory (a directory with {CONFIG_FILE} and "
                             f"{WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a pyinpaint model: {name} is missing")
    return path


def _read_json(where: Path) -> Any:
    """config.json, bounded: at most MAX_CONFIG_BYTES of UTF-8 JSON (no NaN or infinities)."""
    with open(where, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{where}: larger than {MAX_CONFIG_BYTES} bytes, not a model config")

    def no_constant(name):
        raise ValueError(f"{name} is not a valid number here")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{where} is not UTF-8 text (byte {e.start}): not a model config") from None
    except RecursionError:
        raise ModelFileError(f"{where}: JSON nested too deeply, not a model config") from None
    except ValueError as e:
        raise ModelFileError(f"{where} is not valid JSON: {e}") from None


def read_config(path: PathLike) -> dict[str, Any]:
    """The validated config.json of a model directory (format, version, the three config sections)."""
    path = _model_dir(path)
    where = path / CONFIG_FILE
    config = _read_json(where)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelFileError(f"{where}: not a pyinpaint model (format {found!r}, expected {FORMAT!r})")
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{where}: format version must be an integer, got {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{where}: model format version {version} is newer than this pyinpaint reads "
                             f"(version {version} > {VERSION}): upgrade pyinpaint")
    if version < 1:
        raise ModelFileError(f"{where}: invalid model format version {version}")
    missing = [k for k in ("vqvae", "structure", "texture") if not isinstance(config.get(k), dict)]
    if missing:
        raise ModelFileError(f"{where}: missing config sections {missing}")
    unknown = sorted(set(config) - set(_KEYS))
    if unknown:
        raise ModelFileError(f"{where}: unknown key {unknown[0]!r} (a config.json has {', '.join(_KEYS)})")
    return config


def _configs(config: dict[str, Any], where: Path) -> dict[str, Any]:
    cfgs = {}
    for key, cls in (("vqvae", VQVAEConfig), ("structure", StructureConfig), ("texture", TextureConfig)):
        try:
            cfgs[key] = from_dict(cls, config[key])
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"{where}: invalid {key} config: {e}") from None
    try:
        check_configs(cfgs["vqvae"], cfgs["structure"], cfgs["texture"])
    except ValueError as e:
        raise ModelFileError(f"{where}: {e}") from None
    return cfgs


def _header(where: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str]]:
    """({tensor: (shape, safetensors dtype)}, metadata) of a safetensors file, reading no tensor data."""
    try:
        with safe_open(str(where), framework="pt") as f:
            meta = f.metadata() or {}
            info = {}
            for k in f.keys():
                sl = f.get_slice(k)
                info[k] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ModelFileError(f"{where} is not a readable safetensors file: {e}") from None
    return info, meta


def digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): the weights' checksum."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class _MetaShapes(TorchFunctionMode):
    """Random factories and elementwise arithmetic on meta tensors (the initialisers' ``randn(...) * 0.05``)
    answered from shapes and dtypes: torch's own meta path for them imports sympy on first use, seconds at every
    model load. Used inside ``with torch.device("meta")``."""

    _OPS = {torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul, torch.mul, torch.Tensor.__add__,
            torch.Tensor.__radd__, torch.Tensor.add, torch.add, torch.Tensor.__sub__, torch.Tensor.__rsub__,
            torch.Tensor.sub, torch.sub, torch.Tensor.__truediv__, torch.Tensor.div, torch.div}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.randn, torch.rand):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("generator", "device")}
            return torch.empty(*args, **kwargs, device="meta")
        if func in self._OPS and len(args) == 2 and not kwargs:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if all(t.is_meta for t in tensors) and all(isinstance(a, (torch.Tensor, int, float)) for a in args):
                dtype = torch.result_type(*args)
                if func in (torch.Tensor.__truediv__, torch.Tensor.div, torch.div) and not dtype.is_floating_point:
                    dtype = torch.get_default_dtype()
                shape = _broadcast([tuple(t.shape) for t in tensors])
                if shape is not None:
                    return torch.empty(shape, dtype=dtype, device="meta")
        return func(*args, **kwargs)


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...] | None:
    """The broadcast of ``shapes`` (None when they do not broadcast: torch then says why)."""
    n = max(len(s) for s in shapes)
    out = []
    for dims in zip(*((1,) * (n - len(s)) + s for s in shapes)):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


@contextmanager
def on_meta() -> Iterator[None]:
    """Build networks on the meta device: their names, shapes and dtypes, no memory, no initialisation."""
    with torch.device("meta"), _MetaShapes():
        yield


def _build(cfgs: dict[str, Any], discriminator: bool) -> dict[str, torch.nn.Module]:
    """The networks on the meta device (see :func:`on_meta`)."""
    with on_meta():
        modules = {"vqvae": VQVAE(cfgs["vqvae"]), "structure": StructureGenerator(cfgs["structure"]),
                   "texture": TextureGenerator(cfgs["texture"])}
        if discriminator:
            modules["discriminator"] = Discriminator(cfgs["texture"])
    return modules


def _check_header(modules: dict[str, torch.nn.Module], info: dict[str, tuple[tuple[int, ...], str]],
                  where: Path) -> None:
    """Every tensor the networks need is in the file with their shape and a usable dtype, and nothing else."""
    want = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    missing = [k for k in want if k not in info]
    if missing:
        raise ModelFileError(f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing; the config.json "
                             "sections do not describe these weights, or the file is incomplete)")
    unexpected = [k for k in info if k not in want]
    if unexpected:
        raise ModelFileError(f"{where}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected; the "
                             "config.json sections do not describe these weights)")
    for k, t in want.items():
        shape, dtype = info[k]
        if shape != tuple(t.shape):
            raise ModelFileError(f"{where}: tensor {k!r} has shape {shape}, the config.json "
                                 f"{k.partition('.')[0]} section needs {tuple(t.shape)}")
        usable = _FLOATS if t.dtype.is_floating_point else _INTS
        if dtype not in usable:
            raise ModelFileError(f"{where}: tensor {k!r} has dtype {dtype}, expected "
                                 f"{'a floating-point' if t.dtype.is_floating_point else 'an integer'} type "
                                 f"({str(t.dtype).replace('torch.', '')})")


def load_model(path: PathLike, device: str | torch.device = "cpu") -> Model:
    """Read a model directory: the networks in eval mode on ``device``.

    Everything is checked before any weight memory is allocated: config.json (types and ranges of every value,
    configs that fit together), then the networks are built on the meta device and compared with the
    safetensors header (names, shapes, dtypes; no tensor data read). Then the tensors are read, checked against
    the file's checksum (files written by :func:`save_model`) and for NaN or infinite values, and assigned.
    Errors: FileNotFoundError (no directory or file), ModelFileError (a ValueError naming the file and key)."""
    path = _model_dir(path)
    config = read_config(path)
    cfgs = _configs(config, path / CONFIG_FILE)
    where = path / WEIGHTS_FILE
    info, meta = _header(where)
    for key in info:
        head, _, rest = key.partition(".")
        if head not in SECTIONS or not rest:
            raise ModelFileError(f"{where}: unexpected tensor {key!r} (tensor names start with "
                                 f"{', '.join(s + '.' for s in SECTIONS)})")
    absent = [s for s in SECTIONS[:3] if not any(k.startswith(s + ".") for k in info)]
    if absent:
        raise ModelFileError(f"{where}: no weights for {absent}")
    modules = _build(cfgs, any(k.startswith("discriminator.") for k in info))
    _check_header(modules, info, where)

    state = io.load_tensors(where)
    if "sha256" in meta and digest(state) != meta["sha256"]:
        raise ModelFileError(f"{where}: the weights do not match the file's checksum: the file is corrupt")
    for name, module in modules.items():
        own = module.state_dict()
        part = {}
        for k, target in own.items():
            key = f"{name}.{k}"
            t = state.pop(key, None)
            if t is None or t.shape != target.shape:
                raise ModelFileError(f"{where} changed while it was read (tensor {key!r}): load it again")
            t = t.to(target.dtype)
            if t.is_floating_point():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise ModelFileError(f"{where}: tensor {key!r} holds {bad} NaN or infinite values (of "
                                         f"{t.numel()}): the weights are corrupt")
            part[k] = t
        module.load_state_dict(part, strict=True, assign=True)
        left = [n for n, t in itertools.chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"internal error: {name} has tensors that are not in its state_dict: {left[:3]}")
        module.to(device).eval()
    return Model(modules["vqvae"], modules["structure"], modules["texture"], modules.get("discriminator"),
                 source=config.get("source"), path=path)


# ------------------------------------------------------------------------------------------- from runs
def _run_step(run: Path) -> int | None:
    try:
        return int(io.load_json(run / "latest.json")["step"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def _vq_parts(x: PathLike | VQVAE) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of a VQ-VAE run (or RUN/vqvae copy) or of a loaded VQ-VAE."""
    if isinstance(x, VQVAE):
        return dataclasses.asdict(x.cfg), {k: v.detach().cpu() for k, v in x.state_dict().items()}
    x = Path(x)
    return io.load_json(x / "config.json").get("model"), io.load_tensors(x / "ema.safetensors")


def vqvae_differences(a: PathLike | VQVAE, b: PathLike | VQVAE) -> list[str]:
    """How two VQ-VAEs differ (runs, RUN/vqvae copies or loaded ones): config and weights; [] = identical."""
    out = []
    (ca, ta), (cb, tb) = _vq_parts(a), _vq_parts(b)
    if ca != cb:
        keys = sorted(k for k in set(ca or {}) | set(cb or {}) if (ca or {}).get(k) != (cb or {}).get(k))
        out.append(f"config differs in {keys}")
    if ta.keys() != tb.keys():
        out.append(f"tensor names differ ({sorted(set(ta) ^ set(tb))[:3]} ...)")
    else:
        diff = [k for k in ta if ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k])]
        if diff:
            out.append(f"{len(diff)} of {len(ta)} weight tensors differ (e.g. {diff[:3]})")
    return out


def export_runs(vqvae_run: PathLike | None, structure_run: PathLike | None, texture_run: PathLike | None,
                out: PathLike, *, base: PathLike | None = None, allow_vqvae_mismatch: bool = False,
                overwrite: bool = False, card: str | bool = True) -> Path:
    """Assemble a model from three training runs: the VQ-VAE and structure generator with their Polyak-EMA
    weights, the texture generator and discriminator with the weights of the texture run's ``ema.safetensors``
    (stage 3 trains without averaging by default, so these are its raw weights).

    ``base``: a model (a shipped model's name or a model folder) that gives every stage no run is given for, e.g.
    a texture generator fine-tuned with ``--init-from faces`` exported with the rest of ``faces``.

    The structure and texture networks must have been trained on this very VQ-VAE (a run's ``RUN/vqvae`` copy, or
    the base model's own, is compared with the VQ-VAE exported: config and every weight): the PixelCNN's codes index
    that VQ-VAE's codebook and the texture generator learnt that codebook's vectors, so another VQ-VAE gives
    meaningless structures. A mismatch is refused (ValueError) unless ``allow_vqvae_mismatch``, which only warns.
    ``vqvae_run=None`` takes the structure run's own copy (else the texture run's, else the base model's). Configs
    that disagree (size, code dimension, number of codes) are always refused.
    """
    from pyinpaint import runs
    from pyinpaint.inpainter import model_path

    base_path = None if base is None else model_path(str(base))
    model = None if base_path is None else load_model(base_path)
    if model is None and (structure_run is None or texture_run is None):
        raise ValueError("export needs a structure run and a texture run, or a base model (base=..., --base) to take "
                         "the missing stages from")
    structure_run = None if structure_run is None else Path(structure_run)
    texture_run = None if texture_run is None else Path(texture_run)
    given = [(stage, run) for stage, run in (("structure", structure_run), ("texture", texture_run)) if run is not None]
    if vqvae_run is None and given:
        vqvae_run = given[0][1] / "vqvae"
    vqvae = runs.load_vqvae(vqvae_run) if vqvae_run is not None else model.vqvae
    structure = runs.load_structure(structure_run)[0] if structure_run is not None else model.structure
    if texture_run is not None:
        generator, discriminator, _ = runs.load_texture(texture_run)
    else:
        generator, discriminator = model.generator, model.discriminator
    try:
        check_configs(vqvae.cfg, structure.cfg, generator.cfg)
    except ValueError as e:
        raise ValueError(f"the runs do not form one model: {e}") from None
    checks = [(f"the {stage} run {run}", run / "vqvae") for stage, run in given]
    if model is not None and len(given) < 2:
        checks.append((f"the base model {base_path}", model.vqvae))
    for what, theirs in checks:
        diff = vqvae_differences(vqvae, theirs)
        if diff:
            msg = (f"{what} was trained on a different VQ-VAE than the one exported ({'; '.join(diff)}). Its codes and "
                   "structure maps belong to the codebook of its own VQ-VAE, so the exported model would produce "
                   "meaningless structures. Pass the VQ-VAE it was trained on (e.g. a run's copy RUN/vqvae)")
            if not allow_vqvae_mismatch:
                raise ValueError(msg + ", or allow_vqvae_mismatch=True to export anyway.")
            warnings.warn(msg + "; exporting anyway (allow_vqvae_mismatch=True).", UserWarning, stacklevel=2)

    def origin(run: Path | None) -> dict:
        return {"model": str(base_path)} if run is None else {"run": str(run.resolve()), "step": _run_step(run)}

    source = {"exported_from": {"vqvae": origin(None if vqvae_run is None else Path(vqvae_run)),
                                "structure": origin(structure_run), "texture": origin(texture_run)}}
    return save_model(out, vqvae, structure, generator, discriminator, source, card=card, overwrite=overwrite)
