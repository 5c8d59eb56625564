"""``l1wavelet``: L1-wavelet (compressed-sensing) reconstruction by FISTA, any operator on 2D slices.

The classical compressed-sensing baseline (Lustig, Donoho & Pauly 2007; SigPy's
``sigpy.mri.app.L1WaveletRecon``, BART's ``pics -l1``).  Solves, per slice::

    min_x  1/(2 L^2) ||A x - y||^2  +  lam ||W_d x||_1

with ``L = ||A||`` (power iteration, :func:`~medrecon.operators.linalg.estimate_norm`) and
``W_d`` the detail bands of the orthonormal Daubechies wavelet transform with periodic
boundary (:class:`~medrecon.operators.wavelet.Wavelet2D`): the coarsest approximation band is
not penalised (it holds the image's mean and smooth content, which is not sparse), as is
usual.  Complex images use ``|.|`` of the complex coefficient (joint soft-thresholding of real
and imaginary parts), real images the absolute value.  As for ``tv``, dividing the data term
by ``L^2`` makes ``lam`` independent of the operator's scale and puts it in image units; with
``lam=None`` (default) it is set per slice to ``lam_rel`` times the robust range (99th - 1st
percentile of the magnitude) of the classical reconstruction; ``lam_rel="auto"`` (default)
chooses it per slice by cross-validation on held-out measurements where the operator can
hold some out (:mod:`medrecon.samplers.autotune`; MRI lines), 1e-3 otherwise.  On an MRI
operator with ``real_image=True`` it solves for the complex image and returns its magnitude
(``phase_free``, :meth:`medrecon.operators.base.Operator.complex_twin`).

Image sizes that are not a multiple of ``2^levels``: the wavelet transform ``T`` is orthogonal
on the image zero-padded to ``T``'s grid (:mod:`medrecon.operators.wavelet`); the solver works
on that padded grid, ``u``, with the data term on its crop ``C u`` (the image)::

    min_u  1/(2 L^2) ||A C u - y||^2  +  lam ||T_d u||_1,      x = C u

so the proximal map of the wavelet term is exact (``T^T soft(T v)``) and the padding is
filled by whatever extension of the image is sparsest (no wrap-around edge is penalised).
``||A C|| = ||A||``; for sizes that are multiples of ``2^levels`` ``C`` is the identity.

FISTA (Beck & Teboulle 2009) with step 1 (the data term's gradient ``C^T A^H (A C u - y) / L^2``
is 1-Lipschitz), started at zero (or ``x_init``, zero-padded)::

    u_k   = T^T soft_{lam}(T (z_k - C^T A^H (A C z_k - y) / L^2))     (approximation band kept)
    t_k+1 = (1 + sqrt(1 + 4 t_k^2)) / 2,   z_k+1 = u_k + (t_k - 1) / t_k+1 (u_k - u_k-1)

Cost per iteration: one ``A`` and one ``A^H`` (for SENSE: 2 C FFTs) and two wavelet
transforms.  Slices are independent (per-slice weights; the norm is the operator's).

>>> import torch, medrecon
>>> A = medrecon.get_operator("template.scale", shape=[16, 16], factor=2.0)
>>> x = torch.zeros(1, 16, 16); x[0, 4:12, 4:12] = 1.0
>>> s = L1Wavelet(lam=0.01, wavelet="db2", iters=50)
>>> rec = s.sample(A(x), A)
>>> tuple(rec.shape), bool((rec - x).abs().max() < 0.05)
((1, 16, 16), True)
"""

from __future__ import annotations

import math

import torch

from medrecon.errors import InputError
from medrecon.operators.linalg import apply_adjoint_real, apply_forward, estimate_norm
from medrecon.operators.wavelet import WAVELETS, Wavelet2D
from medrecon.samplers.base import Param, Sampler
from medrecon.samplers.tv import robust_range

__all__ = ["L1Wavelet", "soft_threshold"]


def soft_threshold(c: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """``c max(1 - thr / |c|, 0)``: the proximal map of ``thr |.|`` for real or complex ``c``
    (``thr`` broadcastable, >= 0; ``thr = 0`` leaves ``c`` unchanged)."""
    mag = c.abs()
    scale = (1 - thr / mag.clamp(min=torch.finfo(mag.dtype).tiny)).clamp(min=0)
    return c * scale


class L1Wavelet(Sampler):
    """L1-wavelet regularised least squares by FISTA (see the module docstring).

    Parameters: ``lam`` (weight in image units, None: automatic), ``lam_rel`` (the automatic
    weight relative to the classical reconstruction's p99 - p1 range), ``wavelet``
    (``db1`` ... ``db10``, ``haar``), ``levels`` (None: as many as keep the coarsest band at
    least as long as the filter, at most 4), ``iters`` (FISTA iterations, overridden by
    ``steps``).  Real or complex images, operators on 2D slices.
    """

    name = "l1wavelet"
    needs_prior = False
    per_slice = True
    default_steps = 100
    params = {
        "lam": Param(float, None, "wavelet l1 weight in image units (None: lam_rel x robust image range)", lo=0,
                     none_ok=True),
        "lam_rel": Param(float, "auto", "automatic lam as a fraction of the classical recon's p99-p1 range "
                         "(auto: chosen per slice by cross-validation on held-out measurements where the operator "
                         "can hold some out, e.g. MRI lines; 1e-3 otherwise)", lo=0, auto_ok=True),
        "wavelet": Param(str, "db4", "Daubechies wavelet (orthonormal, periodic boundary)", choices=WAVELETS),
        "levels": Param(int, None, "decomposition levels (None: up to 4, coarsest band >= filter length)",
                        lo=1, hi=12, none_ok=True),
        "iters": Param(int, 100, "FISTA iterations (the steps argument overrides)", lo=1),
    }

    phase_free = True
    tunable = ("lam_rel", (1e-4, 1e-3, 1e-2, 1e-1), 1e-3)

    def _tunes(self) -> bool:
        return self._params["lam"] is None and super()._tunes()  # an explicit lam overrides lam_rel

    def _sample(self, y, operator, prior, steps, generators, progress, x_init):
        iters = int(steps) if steps is not None else int(self._params["iters"])
        dshape = tuple(operator.domain_shape)
        if len(dshape) != 2:
            raise InputError(f"sampler 'l1wavelet' needs an operator on 2D images, got domain shape {dshape}")
        real = not operator.domain_is_complex
        W = Wavelet2D(dshape, self._params["wavelet"], self._params["levels"])
        with torch.no_grad():
            L = estimate_norm(operator, device=y.device) * 1.02  # power iteration converges from below
            if L == 0:
                raise InputError("sampler 'l1wavelet' got an operator whose norm is zero")
            x_cl = operator.classical(y)
            if real and x_cl.is_complex():
                x_cl = x_cl.real
            B = y.shape[0]
            lam = self._lam(x_cl)
            # thresholds: lam on the detail bands, 0 on the approximation band (not penalised)
            detail = 1 - W.approx_mask(device=x_cl.device, dtype=lam.dtype)
            thr = lam.view(B, 1, 1) * detail
            if x_init is not None:
                u = W.pad(x_init.to(device=x_cl.device, dtype=x_cl.dtype))
            else:
                u = torch.zeros((B, *W.coeff_shape), dtype=x_cl.dtype, device=x_cl.device)
            inv_l2 = 1.0 / (L * L)
            z, t = u, 1.0
            for i in range(iters):
                r = apply_forward(operator, W.crop(z)) - y
                g = apply_adjoint_real(operator, r, real)
                v = z - W.pad(g.to(z.dtype) * inv_l2)
                u_new = W.inverse(soft_threshold(W.transform(v), thr))
                t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
                z = u_new + ((t - 1) / t_new) * (u_new - u)
                u, t = u_new, t_new
                if progress is not None:
                    progress(i + 1, iters)
        return W.crop(u).contiguous()

    def _lam(self, x_cl: torch.Tensor) -> torch.Tensor:
        """Per-slice (B,) weight in image units."""
        lam = self._params["lam"]
        if lam is not None:
            return torch.full((x_cl.shape[0],), float(lam), dtype=x_cl.real.dtype, device=x_cl.device)
        lam_rel = self._params["lam_rel"]
        return (self.tunable[2] if lam_rel == "auto" else lam_rel) * robust_range(x_cl)
