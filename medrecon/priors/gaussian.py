"""A closed-form Gaussian "diffusion prior": exact eps for x_0 ~ N(m, Sigma) on small images.

For x_0 ~ N(m, Sigma) and x_t = sqrt(abar) x_0 + sqrt(1 - abar) e, the noisy marginal is
N(sqrt(abar) m, C_t) with C_t = abar Sigma + (1 - abar) I, and the exact MMSE noise
prediction (the minimiser of the diffusion training loss) is

    eps(x_t, t) = E[e | x_t] = sqrt(1 - abar_t) C_t^{-1} (x_t - sqrt(abar_t) m).

With Sigma = U diag(lambda) U^T, C_t^{-1} = U diag(1 / (abar lambda + 1 - abar)) U^T.
It satisfies :class:`~medrecon.priors.protocol.PriorProtocol` with identity
``to_net``/``from_net`` (the prior lives in network space), so every sampler can be tested
against analytic posteriors without a neural network (``tests/test_gaussian_posterior.py``).

>>> import torch
>>> p = GaussianPrior(torch.zeros(2, 2), torch.eye(4))
>>> p.eps(torch.zeros(1, 1, 2, 2), torch.tensor([10])).shape
torch.Size([1, 1, 2, 2])
"""

from __future__ import annotations

import torch

from medrecon.errors import InputError

__all__ = ["GaussianPrior", "gaussian_posterior", "smooth_covariance"]


class GaussianPrior:
    """x_0 ~ N(mean, cov) on images of shape ``mean.shape`` (H, W), with a VP schedule.

    Parameters
    ----------
    mean : tensor (H, W)
    cov : tensor (H*W, H*W), symmetric positive semi-definite
    alphas_cumprod : tensor (T,), optional
        Default: the DDPM linear schedule, beta from 1e-4 to 0.02 over ``num_timesteps``.
    num_timesteps : int
        T when ``alphas_cumprod`` is not given (default 1000).

    Computations are float64; ``eps`` returns the dtype of its input.
    """

    def __init__(self, mean, cov, alphas_cumprod=None, num_timesteps: int = 1000):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.ndim != 2:
            raise InputError(f"the Gaussian prior's mean must be an (H, W) image, got shape {tuple(mean.shape)}")
        d = mean.numel()
        cov = torch.as_tensor(cov, dtype=torch.float64)
        if cov.shape != (d, d):
            raise InputError(f"the Gaussian prior's covariance must be ({d}, {d}), got {tuple(cov.shape)}")
        if not torch.allclose(cov, cov.T, atol=1e-10 * float(cov.abs().max()) + 1e-300):
            raise InputError("the Gaussian prior's covariance must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if float(lam.min()) < -1e-9 * float(lam.abs().max()):
            raise InputError("the Gaussian prior's covariance must be positive semi-definite")
        if alphas_cumprod is None:
            betas = torch.linspace(1e-4, 0.02, int(num_timesteps), dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.mean = mean
        self.cov = cov
        self.shape = tuple(mean.shape)
        self._lam = lam.clamp(min=0)
        self._U = U

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact E[e | x_t] for x_t (B, 1, H, W) at integer steps t (B,)."""
        if x_t.ndim != 4 or x_t.shape[1] != 1 or tuple(x_t.shape[2:]) != self.shape:
            raise InputError(f"x_t must be shaped (B, 1, {self.shape[0]}, {self.shape[1]}), got {tuple(x_t.shape)}")
        dev = x_t.device
        t = torch.as_tensor(t, device=dev).long().reshape(-1).expand(x_t.shape[0])
        a = self.alphas_cumprod.to(dev)[t].view(-1, 1)  # (B, 1)
        U, lam, m = self._U.to(dev), self._lam.to(dev), self.mean.to(dev).reshape(1, -1)
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        z = (x - a.sqrt() * m) @ U  # coordinates in the eigenbasis
        z = z / (a * lam.view(1, -1) + (1 - a))
        e = (1 - a).sqrt() * (z @ U.T)
        return e.reshape(x_t.shape).to(x_t.dtype)

    def to_net(self, x_phys: torch.Tensor) -> torch.Tensor:
        return x_phys.clone()

    def from_net(self, x_net: torch.Tensor) -> torch.Tensor:
        return x_net.clone()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact samples of x_0, shaped (n, H, W), float64."""
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)
        x = self.mean.reshape(1, -1) + (z * self._lam.sqrt()) @ self._U.T
        return x.reshape(n, *self.shape)


def gaussian_posterior(prior: GaussianPrior, matrix: torch.Tensor, y: torch.Tensor, noise_std: float):
    """Posterior mean and covariance of x_0 given y = M vec(x_0) + n, n ~ N(0, s^2 I).

    mean = m + Sigma M^T (M Sigma M^T + s^2 I)^{-1} (y - M m);
    cov  = Sigma - Sigma M^T (M Sigma M^T + s^2 I)^{-1} M Sigma.
    ``y`` is one measurement vector (M,); returns (mean (H, W), cov (d, d)), float64.
    """
    M = torch.as_tensor(matrix, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    S, m = prior.cov, prior.mean.reshape(-1)
    G = M @ S @ M.T + float(noise_std) ** 2 * torch.eye(M.shape[0], dtype=torch.float64)
    K = torch.linalg.solve(G, M @ S).T  # Sigma M^T G^{-1}
    mean = m + K @ (y - M @ m)
    cov = S - K @ M @ S
    return mean.reshape(prior.shape), cov


def smooth_covariance(h: int, w: int, length: float = 1.5, std: float = 1.0, nugget: float = 1e-2) -> torch.Tensor:
    """A squared-exponential covariance on an h x w grid plus ``nugget`` on the diagonal.

    Sigma_ij = std^2 exp(-|p_i - p_j|^2 / (2 length^2)) + nugget std^2 delta_ij (float64).
    """
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    return std**2 * (torch.exp(-d2 / (2 * length**2)) + nugget * torch.eye(h * w, dtype=torch.float64))

