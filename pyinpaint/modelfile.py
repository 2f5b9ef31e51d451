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
provenance. :func:`load_model` is the one reader; :func:`save_model` the one writer, used by :func:`export_runs`
(three training runs) and :func:`convert_official` (an official TensorFlow checkpoint). Nothing here unpickles.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    import json

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
    io.save_tensors(path / WEIGHTS_FILE, tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    io.save_json(path / CONFIG_FILE, config)
    if card:
        text = card if isinstance(card, str) else _card(
            configs, source, discriminator is not None,
            {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()})
        io.atomic_write(path / CARD_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


# ------------------------------------------------------------------------------------------------ reading
def _model_dir(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
        path = path.parent  # a file of the model: take its directory
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a model directory (a directory with {CONFIG_FILE} and "
                         f"{WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a pyinpaint model: {name} is missing")
    return path


def read_config(path: PathLike) -> dict[str, Any]:
    """The validated config.json of a model directory (format, version, the three config sections)."""
    path = _model_dir(path)
    config = io.load_json(path / CONFIG_FILE)
    where = path / CONFIG_FILE
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where}: not a pyinpaint model (format {found!r}, expected {FORMAT!r})")
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where}: format version must be an integer, got {version!r}")
    if version > VERSION:
        raise ValueError(f"{where}: model format version {version} is newer than this pyinpaint reads "
                         f"(version {VERSION}): upgrade pyinpaint")
    if version < 1:
        raise ValueError(f"{where}: invalid model format version {version}")
    missing = [k for k in ("vqvae", "structure", "texture") if not isinstance(config.get(k), dict)]
    if missing:
        raise ValueError(f"{where}: missing config sections {missing}")
    return config


def load_model(path: PathLike, device: str | torch.device = "cpu") -> Model:
    """Read a model directory: the networks in eval mode on ``device``.

    Clear errors for a missing directory or file, another format or a newer version, configs that do not fit
    together, and weights that do not fit the configs (missing, unexpected or mis-shaped tensors)."""
    path = _model_dir(path)
    config = read_config(path)
    where = path / CONFIG_FILE
    cfgs = {}
    for key, cls in (("vqvae", VQVAEConfig), ("structure", StructureConfig), ("texture", TextureConfig)):
        try:
            cfgs[key] = from_dict(cls, config[key])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: invalid {key} config: {e}") from None
    try:
        check_configs(cfgs["vqvae"], cfgs["structure"], cfgs["texture"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None

    state = io.load_tensors(path / WEIGHTS_FILE)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head not in SECTIONS or not rest:
            raise ValueError(f"{path / WEIGHTS_FILE}: unexpected tensor {key!r} (tensor names start with "
                             f"{', '.join(s + '.' for s in SECTIONS)})")
        parts.setdefault(head, {})[rest] = value
    absent = [s for s in SECTIONS[:3] if s not in parts]
    if absent:
        raise ValueError(f"{path / WEIGHTS_FILE}: no weights for {absent}")
    modules = {"vqvae": VQVAE(cfgs["vqvae"]), "structure": StructureGenerator(cfgs["structure"]),
               "texture": TextureGenerator(cfgs["texture"])}
    if "discriminator" in parts:
        modules["discriminator"] = Discriminator(cfgs["texture"])
    for name, module in modules.items():
        io.load_state_into(module, parts[name], f"{path / WEIGHTS_FILE} ({name})")
        module.to(device).eval()
    return Model(modules["vqvae"], modules["structure"], modules["texture"], modules.get("discriminator"),
                 source=config.get("source"), path=path)


# ------------------------------------------------------------------------------------------- from runs
def _run_step(run: Path) -> int | None:
    try:
        return int(io.load_json(run / "latest.json")["step"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def vqvae_differences(a: PathLike, b: PathLike) -> list[str]:
    """How two VQ-VAE runs (or RUN/vqvae copies) differ: config and ``ema.safetensors`` tensors; [] = identical."""
    a, b = Path(a), Path(b)
    out = []
    ca, cb = (io.load_json(p / "config.json").get("model") for p in (a, b))
    if ca != cb:
        keys = sorted(k for k in set(ca or {}) | set(cb or {}) if (ca or {}).get(k) != (cb or {}).get(k))
        out.append(f"config differs in {keys}")
    ta, tb = io.load_tensors(a / "ema.safetensors"), io.load_tensors(b / "ema.safetensors")
    if ta.keys() != tb.keys():
        out.append(f"tensor names differ ({sorted(set(ta) ^ set(tb))[:3]} ...)")
    else:
        diff = [k for k in ta if ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k])]
        if diff:
            out.append(f"{len(diff)} of {len(ta)} weight tensors differ (e.g. {diff[:3]})")
    return out


def export_runs(vqvae_run: PathLike | None, structure_run: PathLike, texture_run: PathLike, out: PathLike, *,
                allow_vqvae_mismatch: bool = False, overwrite: bool = False, card: str | bool = True) -> Path:
    """Assemble a model from three training runs: the VQ-VAE and structure generator with their Polyak-EMA
    weights, the texture generator and discriminator with the weights of the texture run's ``ema.safetensors``
    (stage 3 trains without averaging by default, so these are its raw weights).

    The structure and texture runs must have been trained on this very VQ-VAE (their ``RUN/vqvae`` copy is
    compared with ``vqvae_run``: config and every weight): the PixelCNN's codes index that VQ-VAE's codebook and
    the texture generator learnt that codebook's vectors, so another VQ-VAE gives meaningless structures. A
    mismatch is refused (ValueError) unless ``allow_vqvae_mismatch``, which only warns. ``vqvae_run=None``
    takes the structure run's own copy. Configs that disagree (size, code dimension, number of codes) are
    always refused.
    """
    from pyinpaint import runs

    structure_run, texture_run = Path(structure_run), Path(texture_run)
    vqvae_run = structure_run / "vqvae" if vqvae_run is None else Path(vqvae_run)
    vqvae = runs.load_vqvae(vqvae_run)
    structure, _ = runs.load_structure(structure_run)
    generator, discriminator, _ = runs.load_texture(texture_run)
    try:
        check_configs(vqvae.cfg, structure.cfg, generator.cfg)
    except ValueError as e:
        raise ValueError(f"the runs do not form one model: {e}") from None
    for stage, run in (("structure", structure_run), ("texture", texture_run)):
        diff = vqvae_differences(vqvae_run, run / "vqvae")
        if diff:
            msg = (f"the {stage} run {run} was trained on a different VQ-VAE than {vqvae_run} ({'; '.join(diff)}). "
                   f"Its codes and structure maps belong to the codebook of its own VQ-VAE ({run / 'vqvae'}), so "
                   "the exported model would produce meaningless structures. Pass the VQ-VAE it was trained on "
                   "(e.g. its copy RUN/vqvae)")
            if not allow_vqvae_mismatch:
                raise ValueError(msg + ", or allow_vqvae_mismatch=True to export anyway.")
            warnings.warn(msg + "; exporting anyway (allow_vqvae_mismatch=True).", UserWarning, stacklevel=2)
    source = {"exported_from": {stage: {"run": str(run.resolve()), "step": _run_step(run)}
                                for stage, run in (("vqvae", vqvae_run), ("structure", structure_run),
                                                   ("texture", texture_run))}}
    return save_model(out, vqvae, structure, generator, discriminator, source, card=card, overwrite=overwrite)


# ----------------------------------------------------------------------------- official checkpoints
SHADOW = "/ExponentialMovingAverage"
# Templates whose trained weights are the Polyak shadows in official stage checkpoints (train_vqvae.py and
# train_structure_generator.py keep an ExponentialMovingAverage; later stages and save_full_model.py restore
# from it). The texture generator and discriminator are trained and used without averaging.
SHADOWED = ("vq_encoder/", "vq_decoder/", "structure_condition/", "structure_pixelcnn/")
# flags that the weights do not determine
REQUIRED_FLAGS = {"image_size": "the networks are fully convolutional, so the weights do not fix the image size"}


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]


def _indexed(arrays: Mapping[str, Any], template: str, kind: str, leaf: str) -> list[tuple[int, ...]]:
    """Shapes of ``template/kind_i/leaf`` for i = 0, 1, ... (must be numbered without gaps)."""
    pat = re.compile(rf"^{re.escape(template)}/{kind}_(\d+)/{leaf}$")
    found = {int(m.group(1)): tuple(int(s) for s in arrays[n].shape) for n in arrays if (m := pat.match(n))}
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"{template}/{kind}_* layers are not numbered 0..{len(found) - 1}: {sorted(found)[:10]}")
    return [found[i] for i in range(len(found))]


def infer_structure_config(arrays: Mapping[str, Any], image_size: int = 256, **overrides) -> StructureConfig:
    """Structure-generator widths from the official variable shapes (``arrays``: name -> anything with .shape).

    Condition net: ``wnconv2d_0/V`` [5, 5, 5, c] and ``wnconv2d_1/V`` [3, 3, 2c, r]. PixelCNN: ``wnconv2d_0/V``
    [2, 3, D + 1, C], ``wnconv2d_3/V`` [2, 3, 2C, R], 3 + 4 x (resnet pairs) convolutions; the ``wndense``
    layers, in creation order, are per pair the u block's h nin [2Hc, 2C] and the ul block's a nin [2C, R] and
    h nin [2Hc, 2C]; after the last pair of each attention group 3 x heads q, k, v nins ([C, C//8], [C, C//8],
    [C, C//2]) and the output nin [heads x C//2, C]; then the output resnets' nins [C, C] and the logits [C, K].
    """
    try:
        cond = _indexed(arrays, "structure_condition", "wnconv2d", "V")
        conv = _indexed(arrays, "structure_pixelcnn", "wnconv2d", "V")
        dense = _indexed(arrays, "structure_pixelcnn", "wndense", "V")
    except ValueError as e:
        raise ValueError(f"not an official structure generator: {e}") from None
    if not cond or not conv or not dense:
        raise ValueError("no structure generator in the checkpoint (structure_condition/*, structure_pixelcnn/*)")
    if len(cond) != 30 or len(cond[0]) != 4 or cond[0][:3] != (5, 5, 5):
        raise ValueError(f"unexpected structure_condition: {len(cond)} wnconv2d layers (official: 30), first "
                         f"{cond[0]}")
    resnets, rest = divmod(len(conv) - 3, 4)
    if rest or resnets < 1:
        raise ValueError(f"unexpected number of structure_pixelcnn wnconv2d layers: {len(conv)}")
    c, r = cond[0][3], cond[1][3]
    d, ch = conv[0][2] - 1, conv[0][3]
    res = conv[3][3]
    h_nin, aux, q, v = (16 * c, 2 * ch), (2 * ch, res), (ch, ch // 8), (ch, ch // 2)

    def fail(i: int, what: str):
        got = dense[i] if i < len(dense) else "nothing"
        return ValueError(f"structure_pixelcnn/wndense_{i}/V: expected {what}, found {got} (inferred C={ch}, "
                          f"R={res}, h channels {8 * c})")

    i, pairs, groups = 0, 0, []
    pair = ((h_nin, "the u block's h nin"), (aux, "the ul block's a nin"), (h_nin, "the ul block's h nin"))
    for _ in range(resnets):
        for want, what in pair:
            if i >= len(dense) or dense[i] != want:
                raise fail(i, f"{what} {want}")
            i += 1
        pairs += 1
        if i < len(dense) and dense[i] == q:  # an attention block closes this group
            heads = 0
            while dense[i:i + 3] == [q, q, v]:
                heads, i = heads + 1, i + 3
            if i >= len(dense) or dense[i] != (heads * (ch // 2), ch):
                raise fail(i, f"the attention output nin {(heads * (ch // 2), ch)}")
            groups.append((pairs, heads))
            i, pairs = i + 1, 0
    if pairs or not groups:
        raise ValueError(f"structure_pixelcnn: the last {pairs} resnet pairs end without an attention block")
    if len(set(groups)) != 1:
        raise ValueError(f"structure_pixelcnn: attention groups differ in size or heads: {groups} "
                         "((pairs, heads) per group)")
    for j in range(i, len(dense) - 1):
        if dense[j] != (ch, ch):
            raise fail(j, f"an output resnet nin {(ch, ch)}")
    if len(dense) <= i or dense[-1][0] != ch:
        raise fail(len(dense) - 1, f"the logits nin ({ch}, K)")
    kw = dict(image_size=image_size, embedding_dim=d, num_embeddings=dense[-1][1], cond_channels=c,
              cond_res_channels=r, channels=ch, res_channels=res, resnets=resnets, out_resnets=len(dense) - 1 - i,
              attention=len(groups), heads=groups[0][1])
    kw.update(overrides)
    return StructureConfig(**kw)


def infer_texture_config(arrays: Mapping[str, Any], image_size: int = 256, **overrides) -> TextureConfig:
    """Texture generator (and discriminator) widths from the official variable shapes: ``gated_conv2d_0/W``
    [5, 5, 5, c], the structure branch's ``gated_conv2d_4/W`` [3, 3, D, 4c], ``snconv2d_0/W`` [5, 5, 4, c_d]
    (when the checkpoint holds the discriminator; otherwise ``dis_channels`` keeps its default or override)."""
    try:
        g0 = tuple(arrays["texture_generator/gated_conv2d_0/W"].shape)
        g4 = tuple(arrays["texture_generator/gated_conv2d_4/W"].shape)
    except KeyError as e:
        raise ValueError(f"no texture generator in the checkpoint: {e} is missing") from None
    if len(g0) != 4 or g0[:3] != (5, 5, 5) or len(g4) != 4 or g4[3] != 4 * g0[3]:
        raise ValueError(f"unexpected texture_generator shapes: gated_conv2d_0/W {g0}, gated_conv2d_4/W {g4}")
    kw: dict[str, Any] = dict(image_size=image_size, embedding_dim=g4[2], channels=g0[3])
    if "texture_discriminator/snconv2d_0/W" in arrays:
        kw["dis_channels"] = int(arrays["texture_discriminator/snconv2d_0/W"].shape[3])
    kw.update(overrides)
    return TextureConfig(**kw)


class _Checkpoints:
    """One or several official checkpoints seen as one set of variables, shadows preferred where they count."""

    def __init__(self, paths: Sequence[PathLike]):
        from pyinpaint import tfcheckpoint

        self.tfc = tfcheckpoint
        self.prefixes = [tfcheckpoint.resolve_prefix(p) for p in paths]
        self.where: dict[str, list[tuple[Path, tuple[int, ...]]]] = {}
        for prefix in self.prefixes:
            for name, (shape, _) in tfcheckpoint.list_variables(prefix).items():
                self.where.setdefault(name, []).append((prefix, tuple(shape)))

    def source(self, name: str) -> str:
        """The stored name that holds ``name``'s weights: its EMA shadow for the VQ-VAE and structure generator."""
        if name.startswith(SHADOWED) and name + SHADOW in self.where:
            return name + SHADOW
        return name

    def shapes(self) -> dict[str, _Shape]:
        plain = {n[: -len(SHADOW)] if n.endswith(SHADOW) else n for n in self.where}
        return {n: _Shape(self.where.get(self.source(n), self.where.get(n + SHADOW))[0][1]) for n in plain}

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        """{official name: array} for the names present (a name held by several checkpoints must agree)."""
        wanted: dict[Path, list[str]] = {}
        for name in names:
            src = self.source(name)
            for prefix, _ in self.where.get(src, []):
                wanted.setdefault(prefix, []).append(src)
        out: dict[str, np.ndarray] = {}
        origin: dict[str, Path] = {}
        for prefix, srcs in wanted.items():
            for src, a in self.tfc.read_checkpoint(prefix, names=srcs).items():
                name = src[: -len(SHADOW)] if src.endswith(SHADOW) else src
                if name in out and not (out[name].shape == a.shape and np.array_equal(out[name], a)):
                    raise ValueError(f"the checkpoints disagree on {src}: {origin[name]} and {prefix} hold different "
                                     "values (were the stages trained on the same VQ-VAE?)")
                out[name], origin[name] = a, prefix
        return out


def _flag_value(flags: Mapping[str, Any], name: str, kind=int):
    try:
        return kind(flags[name])
    except (TypeError, ValueError):
        raise ValueError(f"flag {name} must be {kind.__name__}, got {flags[name]!r}") from None


def official_configs(arrays: Mapping[str, Any], flags: Mapping[str, Any] | None = None
                     ) -> tuple[VQVAEConfig, StructureConfig, TextureConfig]:
    """The three configs of an official full model: widths inferred from the variable shapes, the rest (the
    image size; optionally the VQ training constants and dropout) from the official flags, which must agree
    with the shapes where both say something."""
    from pyinpaint.models.official import infer_vqvae_config

    flags = dict(flags or {})
    missing = [f"{k} ({why})" for k, why in REQUIRED_FLAGS.items() if flags.get(k) is None]
    if missing:
        raise ValueError("the checkpoint does not determine " + "; ".join(missing) + ": pass the official flags, "
                         "e.g. flags={'image_size': 256} (the --image_size the model was trained with)")
    if flags.get("resnet_nonlinearity", "concat_elu") != "concat_elu":
        raise ValueError(f"resnet_nonlinearity {flags['resnet_nonlinearity']!r} is not supported (only concat_elu, "
                         "the one every released model uses)")
    size = _flag_value(flags, "image_size")
    vq_extra = {ours: _flag_value(flags, theirs, float) for ours, theirs in
                (("commitment_cost", "commitment_cost"), ("decay", "decay")) if flags.get(theirs) is not None}
    st_extra = {"dropout": _flag_value(flags, "dropout_s", float)} if flags.get("dropout_s") is not None else {}
    has_dis = "texture_discriminator/snconv2d_0/W" in arrays
    tx_extra = ({"dis_channels": _flag_value(flags, "nr_channel_dis_t")}
                if not has_dis and flags.get("nr_channel_dis_t") is not None else {})
    try:
        vq = infer_vqvae_config(arrays, image_size=size, **vq_extra)
    except KeyError as e:
        raise ValueError(f"no VQ-VAE in the checkpoint: {e.args[0] if e.args else e}") from None
    st = infer_structure_config(arrays, size, **st_extra)
    tx = infer_texture_config(arrays, size, **tx_extra)
    conflicts = []
    for cfg in (vq, st, tx):
        for ours, theirs in type(cfg).official_flags.items():
            if flags.get(theirs) is not None and ours not in ("dropout", "commitment_cost", "decay"):
                value = getattr(cfg, ours)
                try:
                    same = type(value)(flags[theirs]) == value
                except (TypeError, ValueError):
                    same = False
                if not same:
                    conflicts.append(f"--{theirs} {flags[theirs]!r} but the weights say {getattr(cfg, ours)!r}")
    if conflicts:
        raise ValueError("the flags contradict the checkpoint: " + "; ".join(sorted(set(conflicts))))
    check_configs(vq, st, tx)
    return vq, st, tx


def convert_official(ckpt: PathLike | Sequence[PathLike], out: PathLike, flags: Mapping[str, Any] | None = None, *,
                     overwrite: bool = False, card: str | bool = True) -> Path:
    """Convert an official TensorFlow checkpoint (read without TensorFlow) into a model directory.

    ``ckpt``: anything :func:`~pyinpaint.tfcheckpoint.resolve_prefix` accepts (prefix, .index, .data file, or a
    directory with a ``checkpoint`` file): a full model as ``save_full_model.py`` writes it, or a list of stage
    checkpoints that together hold every network (e.g. the structure and texture stages; variables they share
    must be equal). Where a checkpoint holds ``<var>/ExponentialMovingAverage`` shadows (stage checkpoints),
    they are used for the VQ-VAE and the structure generator, as the official pipeline does; the texture
    generator and discriminator are read by their plain names. Widths are inferred from the shapes; ``flags``
    (official argparse names, e.g. ``{"image_size": 256}``) give the rest, and a clear error lists what is
    missing. The discriminator is included when the checkpoint has one. Returns the model directory.
    """
    from pyinpaint.models import official

    paths = [ckpt] if isinstance(ckpt, (str, os.PathLike)) else list(ckpt)
    if not paths:
        raise ValueError("no checkpoint given")
    cps = _Checkpoints(paths)
    vq_cfg, st_cfg, tx_cfg = official_configs(cps.shapes(), flags)
    vqvae, structure, generator = VQVAE(vq_cfg), StructureGenerator(st_cfg), TextureGenerator(tx_cfg)
    names = {"vqvae": official.vqvae_names(vqvae), "structure": official.structure_names(structure),
             "texture": official.texture_names(generator)}
    discriminator = None
    if any(n.startswith("texture_discriminator/") for n in cps.where):
        discriminator = Discriminator(tx_cfg)
        names["discriminator"] = official.discriminator_names(discriminator)
    wanted = [n for group in names.values() for n in group]
    arrays = cps.read(wanted)
    for what, group in names.items():
        try:
            official.load_official(group, arrays)
        except KeyError as e:
            raise ValueError(f"the checkpoint lacks {what} variables: {e.args[0] if e.args else e}") from None
    shadows = sorted({cps.source(n) for n in wanted if cps.source(n).endswith(SHADOW)})
    prefixes = [str(p.resolve()) for p in cps.prefixes]
    source = {"converted_from": prefixes[0] if len(prefixes) == 1 else prefixes,
              "flags": dict(flags) if flags is not None else None,
              "ema_shadows_used": len(shadows)}
    for m in (vqvae, structure, generator, discriminator):
        if m is not None:
            m.eval()
    return save_model(out, vqvae, structure, generator, discriminator, source, card=card, overwrite=overwrite)
