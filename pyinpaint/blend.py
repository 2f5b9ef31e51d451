"""How a fill meets the photo: the seam between generated and known pixels, at the input's resolution.

Blends (``blend=`` of :meth:`pyinpaint.Inpainter.sample`, ``--blend`` on the command line):

* ``"poisson"`` (the default; not in the official pipeline, measured in ``docs/evaluation.md``): the texture
  generator's raw output, resized to the window, plus a correction field that equals *input - output* at every known
  pixel and is harmonic inside the hole (each hole pixel the mean of its four neighbours). The fill keeps the
  generated texture (its gradients) and meets the known pixels without a step in colour or brightness: Poisson image
  editing (Perez, Gangnet and Blake, SIGGRAPH 2003, "seamless cloning") with the photo at full resolution as the
  boundary condition. A model working at 128 px tends to shift the colour of a thin fill a little; the correction
  removes exactly that shift, and a constant shift entirely.
* ``"paste"`` (the official ``test.py``): the completion at model size (generated pixels in the model-size hole, the
  resized input elsewhere) resized to the window, its hole pixels written as they are.

Either way only hole pixels are written: every known pixel stays the input's, bit for bit.

:func:`harmonic_fill` solves the Laplace equation by multigrid: a first guess coarse to fine (the known values
averaged down a pyramid, halving each side, a coarse pixel known when any of its pixels is; the coarsest level's mean;
each finer level starts from the coarser one, bilinear, and runs :data:`SWEEPS` Jacobi sweeps with the known pixels
held fixed), then :data:`CYCLES` V-cycles on the residual (a coarse pixel free only when all of its pixels are). Only
the hole's bounding box plus a one-pixel ring is solved (:func:`hole_box`): outside it nothing changes. Two V-cycles
leave at most about 1 % of the value range on boundary data that is pure noise (``tests/test_blend.py`` measures it
against a direct solve; a smooth colour difference, the real case, converges further). Cost and memory:
``docs/benchmarks.md`` ("Poisson blend") and :data:`pyinpaint.bounds.BLEND_BYTES_PER_PIXEL`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLENDS = ("poisson", "paste")  # the first is the default
SWEEPS = 10  # Jacobi sweeps per pyramid level of the first guess (half before, half after each V-cycle's coarsening)
CYCLES = 2  # multigrid V-cycles after the first guess


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}: expected one of {', '.join(BLENDS)}")
    return blend


def harmonic_fill(values: torch.Tensor, known: torch.Tensor, cycles: int = CYCLES) -> torch.Tensor:
    """``values`` [B, C, H, W] (only read where ``known``), ``known`` [B, 1, H, W] (1 = known, 0 = to fill) -> a field
    equal to ``values`` at the known pixels and harmonic elsewhere (each such pixel the mean of its four neighbours; a
    neighbour outside the image counts as the pixel itself), to within what ``cycles`` multigrid V-cycles reach (see
    the module's docstring). An image with no known pixel gets zeros."""
    if values.dim() != 4 or known.dim() != 4 or known.shape[1] != 1 or known.shape[0] != values.shape[0] \
            or known.shape[-2:] != values.shape[-2:]:
        raise ValueError(f"expected values [B, C, H, W] and known [B, 1, H, W], got {tuple(values.shape)} and "
                         f"{tuple(known.shape)}")
    fixed = known > 0
    v = torch.where(fixed, values, torch.zeros((), dtype=values.dtype, device=values.device))  # NaN-safe
    u = _cascade(v, fixed)
    del v
    free = (~fixed).to(u.dtype)
    for _ in range(cycles):  # the correction e of u: e = mean4(e) + r in the hole, 0 at the known pixels
        r = _mean4(u).sub_(u).mul_(free)
        u.add_(_vcycle(r, free))
        del r
    return u


def _mean4(u: torch.Tensor) -> torch.Tensor:
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    out = p[..., :-2, 1:-1] + p[..., 2:, 1:-1]
    out.add_(p[..., 1:-1, :-2]).add_(p[..., 1:-1, 2:])
    return out.mul_(0.25)


def _cascade(v: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """A first guess, coarse to fine: the known values averaged down a pyramid (a coarse pixel is known when any of
    its pixels is), the coarsest level's mean, then bilinear up with ``SWEEPS`` Jacobi sweeps per level. ``v`` is 0
    off the known pixels."""
    h, w = v.shape[-2:]
    if min(h, w) <= 2:
        count = fixed.sum((2, 3), keepdim=True)
        mean = v.sum((2, 3), keepdim=True) / count.clamp_min(1)
        return torch.where(fixed, v, mean.expand_as(v))
    k2 = F.avg_pool2d(fixed.to(v.dtype), 2, ceil_mode=True)
    v2 = F.avg_pool2d(v, 2, ceil_mode=True).div_(k2.clamp_min(1e-12))
    u = F.interpolate(_cascade(v2, k2 > 0), size=(h, w), mode="bilinear", align_corners=False)
    del v2, k2
    free = (~fixed).to(v.dtype)
    u.mul_(free).add_(v)
    for _ in range(SWEEPS):
        u = _mean4(u).mul_(free).add_(v)
    return u


def _vcycle(r: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """e with e = mean4(e) + r where ``free`` (1) and e = 0 elsewhere, approximately: one multigrid V-cycle (Jacobi
    smoothing; residuals averaged down to a grid where a coarse pixel is free only when all of its pixels are; there
    the same equation with 4 x the residual, the grid's spacing being twice as large)."""
    h, w = r.shape[-2:]
    coarsest = min(h, w) <= 4
    e = r.clone()  # the first sweep from e = 0 (r is 0 off the free pixels)
    for _ in range((4 * SWEEPS if coarsest else SWEEPS // 2) - 1):
        e = _mean4(e).add_(r).mul_(free)
    if coarsest:
        return e
    res = _mean4(e).add_(r).sub_(e).mul_(free)
    free2 = (F.avg_pool2d(free, 2, ceil_mode=True) >= 1).to(free.dtype)
    e2 = _vcycle(F.avg_pool2d(res, 2, ceil_mode=True).mul_(4), free2)
    del res
    e.add_(F.interpolate(e2, size=(h, w), mode="bilinear", align_corners=False).mul_(free))
    del e2
    for _ in range(SWEEPS // 2):
        e = _mean4(e).add_(r).mul_(free)
    return e


def hole_box(hole: torch.Tensor) -> tuple[slice, slice] | None:
    """The bounding box of ``hole`` ([H, W] bool) grown by one pixel (clipped to the image): every hole pixel and
    all of its neighbours, so the harmonic problem solved in it is the whole image's. None for an empty hole."""
    rows, cols = hole.any(1).nonzero(), hole.any(0).nonzero()
    if len(rows) == 0:
        return None
    h, w = hole.shape
    return (slice(max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)),
            slice(max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)))


def poisson_fill_(generated: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
                  cycles: int = CYCLES) -> torch.Tensor:
    """Blend ``generated`` ([B, C, H, W], the generator's output at the image's size) into ``image`` ([C, H, W], same
    scale) at ``hole`` ([H, W] bool), in place: ``generated`` plus the harmonic interpolation of ``image - generated``
    from the known pixels, inside the hole's box (:func:`hole_box`; outside it ``generated`` is left as it is).
    Returns ``generated``, whose hole pixels are the fill (its known pixels in the box become ``image``'s)."""
    box = hole_box(hole)
    if box is None:
        return generated
    known = ~hole[box]
    if not bool(known.any()):  # the hole is the whole image: nothing to meet
        return generated
    g = generated[(..., *box)]
    known = known.to(g.dtype)[None, None].expand(g.shape[0], 1, -1, -1)
    g.add_(harmonic_fill(image[(..., *box)][None] - g, known, cycles))
    return generated
