"""Feature caching across diffusion steps (DeepCache: Ma, Fang, Wang, CVPR 2024) for MONAI's UNet.

A UNet's output at step t is ``out(U_0(... U_{d-1}(h_d, s), ...))``: the up blocks of the
``d`` shallowest levels take the deep feature ``h_d`` (the output of the deeper up blocks, at
level ``d - 1``'s resolution) and the skip features ``s`` of the shallow down blocks.  Between
adjacent steps ``h_d`` changes little (it holds the image's coarse content), while ``s``
carries the current noisy input.  DeepCache therefore runs, every ``N`` steps, a **full** pass
that also stores ``h_d``, and in between a **shallow** pass::

    full    (call k, k % N == 0):  out_k = UNet(x_k, t_k),   h <- h_d(x_k, t_k)   (stored detached)
    shallow (otherwise):           out_k = out(U_{<d}(h, s_{<d}(x_k, t_k), emb(t_k)))

The shallow pass runs the time embedding, ``conv_in``, the down blocks of levels ``< d`` (the
last of them without its downsampler, whose output only the deeper levels read) and the up
blocks of levels ``< d``; the middle block and the deep levels are skipped.  With the shipped
priors' network (channels 32 / 64 / 128 / 128, attention at the two deepest levels) and
``d = 1`` the shallow pass is a fraction of the full one (docs/benchmarks.md, "Feature caching").

Gradients (DPS): the stored ``h`` is a constant for the steps that reuse it (detached), so with
``jacobian="shallow"`` ``d out_k / d x_k`` is the derivative of the shallow path only; with
``jacobian="none"`` a shallow pass takes its input detached, so the network adds nothing to the
gradient of a cached step and DPS's ``d x0_hat / d x_t`` is the identity over ``sqrt(abar_t)``
(the Tweedie formula's explicit term; the Jacobian-free approximation).  A full pass
differentiates the whole network as without caching, whatever ``jacobian``.

Scope: a :class:`FeatureCache` belongs to ONE sampler call (one batch, one draw) and is made by
:func:`make_cache`; it is never shared between calls, so no feature leaks between slices,
batches or draws.  A call whose input shape, device or dtype differs from the stored feature's
runs a full pass.  The cache reaches the network through :func:`cached_call` (a context
variable read by :meth:`medrecon.priors.model.DiffusionPrior.net_output`), so wrappers around a
prior (:class:`~medrecon.priors.rescaled.RescaledPrior`, intensity-bound copies) pass it through
unchanged.  A prior without a MONAI DiffusionModelUNet (e.g. the Gaussian test prior) never
reads it and runs uncached.  ``interval`` 0 or 1 makes no cache at all: the network runs
exactly as without this module (bit-identical outputs).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import torch

from medrecon.errors import InputError

__all__ = ["DEFAULT_DEPTH", "JACOBIANS", "FeatureCache", "cached_call", "check_interval", "current_cache", "make_cache",
           "supports"]

#: what a cached (shallow) pass contributes to a gradient with respect to its input: "shallow",
#: the shallow path's Jacobian; "none", nothing (the input is detached)
JACOBIANS = ("none", "shallow")

#: shallow levels that run on a cached step (1: only the full-resolution level); chosen by
#: benchmarks/caching.py (docs/benchmarks.md, "Feature caching")
DEFAULT_DEPTH = 1

_ACTIVE: contextvars.ContextVar[FeatureCache | None] = contextvars.ContextVar("medrecon_feature_cache",
                                                                              default=None)
_BLOCKS = ("DownBlock", "AttnDownBlock")


def check_interval(interval: int, steps: int | None, what: str = "cache_interval") -> int:
    """``interval`` as an int; an :class:`InputError` (one sentence) when it is negative or larger
    than ``steps`` (the steps the run makes; None: not known, only the sign is checked)."""
    n = int(interval)
    if n < 0:
        raise InputError(f"{what} must be 0 (off) or a positive number of steps, got {n}")
    if steps is not None and n > int(steps):
        raise InputError(f"{what} {n} is larger than the {int(steps)} step(s) of the run; use at most {int(steps)} "
                         "(0 turns caching off)")
    return n


def supports(net: torch.nn.Module) -> bool:
    """Whether ``net`` is a MONAI DiffusionModelUNet this module can run in two modes: no class or
    cross-attention conditioning, down blocks of the plain or self-attention kind."""
    need = ("conv_in", "time_embed", "down_blocks", "middle_block", "up_blocks", "out", "block_out_channels")
    if not all(hasattr(net, a) for a in need):
        return False
    if getattr(net, "num_class_embeds", None) is not None or getattr(net, "with_conditioning", False):
        return False
    return all(type(b).__name__ in _BLOCKS for b in net.down_blocks)


class FeatureCache:
    """The deep feature of the last full pass, for one sampler call (see the module docstring).

    ``interval`` N >= 2: a full pass on calls 0, N, 2N, ... of :meth:`run`, shallow passes in
    between.  ``depth`` d: the number of shallow levels (1 .. number of levels; None:
    :data:`DEFAULT_DEPTH`).  ``full_passes`` and ``shallow_passes`` count what ran.  The stored
    feature is (B, C_d, H_d, W_d): at depth 1 the second level's channels at full resolution
    (64 x 256 x 256 floats, 16 MiB, per 256 x 256 slice of the shipped priors).
    """

    def __init__(self, interval: int, depth: int | None = None, jacobian: str = "shallow"):
        depth = DEFAULT_DEPTH if depth is None else depth
        if int(interval) < 1:
            raise InputError(f"a feature cache needs an interval >= 1, got {interval}")
        if int(depth) < 1:
            raise InputError(f"a feature cache needs a depth >= 1, got {depth}")
        if jacobian not in JACOBIANS:
            raise InputError(f"a feature cache's jacobian must be one of {', '.join(JACOBIANS)}, got {jacobian!r}")
        self.interval, self.depth, self.jacobian = int(interval), int(depth), jacobian
        self.calls = self.full_passes = self.shallow_passes = 0
        self._feature: torch.Tensor | None = None
        self._key: tuple | None = None

    def reset(self) -> None:
        """Forget the stored feature: the next call runs a full pass."""
        self.calls, self._feature, self._key = 0, None, None

    def run(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``net(x, t)`` (x (B, C, H, W) with H, W multiples of the network's downsampling factor,
        t (B,) integer steps): a full pass or a shallow one, by the call count."""
        depth = min(self.depth, len(net.down_blocks))
        key = (tuple(x.shape), x.device, id(net), depth)
        full = self._feature is None or self._key != key or self.calls % self.interval == 0
        self.calls += 1
        emb = _embedding(net, x, t)
        if full:
            out, feature = _full(net, x, emb, depth)
            self._feature, self._key = feature.detach(), key
            self.full_passes += 1
            return out
        self.shallow_passes += 1
        return _shallow(net, x.detach() if self.jacobian == "none" else x, emb, depth, self._feature)


def make_cache(interval: int, depth: int | None = None, jacobian: str = "shallow") -> FeatureCache | None:
    """A new :class:`FeatureCache` for one sampler call, or None for ``interval`` 0 (off) or 1 (a full
    pass every step is the network itself).  ``depth`` None: :data:`DEFAULT_DEPTH` (read at the call);
    ``jacobian``: what a cached step differentiates (see the module docstring)."""
    return FeatureCache(interval, depth, jacobian) if int(interval) >= 2 else None


def current_cache() -> FeatureCache | None:
    """The cache of the :func:`cached_call` in progress (None outside one)."""
    return _ACTIVE.get()


def cached_call(cache: FeatureCache | None, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``cache`` active for the network calls it makes (None: plain call)."""
    if cache is None:
        return fn(*args, **kwargs)
    token = _ACTIVE.set(cache)
    try:
        return fn(*args, **kwargs)
    finally:
        _ACTIVE.reset(token)


# ------------------------------------------------------------------ the two passes (MONAI's forward, split)
def _embedding(net, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from monai.networks.nets.diffusion_model_unet import get_timestep_embedding

    return net.time_embed(get_timestep_embedding(t, net.block_out_channels[0]).to(dtype=x.dtype))


def _up(blocks, h: torch.Tensor, res: list[torch.Tensor], emb: torch.Tensor):
    """The up ``blocks`` from ``h``, each taking its skip features from the end of ``res``; returns
    ``(h, the skip features left)``."""
    for block in blocks:
        idx = -len(block.resnets)
        h = block(hidden_states=h, res_hidden_states_list=res[idx:], temb=emb, context=None)
        res = res[:idx]
    return h, res


def _full(net, x: torch.Tensor, emb: torch.Tensor, depth: int):
    """MONAI's ``DiffusionModelUNet.forward`` (no conditioning), returning also the input of the up
    block of level ``depth - 1``."""
    h = net.conv_in(x)
    res = [h]
    for block in net.down_blocks:
        h, states = block(hidden_states=h, temb=emb, context=None)
        res.extend(states)
    h = net.middle_block(hidden_states=h, temb=emb, context=None)
    n_deep = len(net.up_blocks) - depth
    feature, res = _up(net.up_blocks[:n_deep], h, res, emb)
    h, _ = _up(net.up_blocks[n_deep:], feature, res, emb)
    return net.out(h), feature


def _shallow(net, x: torch.Tensor, emb: torch.Tensor, depth: int, feature: torch.Tensor) -> torch.Tensor:
    """The output from the shallow levels ``< depth`` and the stored deep ``feature``."""
    h = net.conv_in(x)
    res = [h]
    for j in range(depth):
        block = net.down_blocks[j]
        if j < depth - 1:
            h, states = block(hidden_states=h, temb=emb, context=None)
            res.extend(states)
            continue
        attns = getattr(block, "attentions", None)  # the block without its downsampler
        for k, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if attns is not None:
                h = attns[k](h).contiguous()
            res.append(h)
    h, _ = _up(net.up_blocks[len(net.up_blocks) - depth:], feature.to(h.dtype), res, emb)
    return net.out(h)
