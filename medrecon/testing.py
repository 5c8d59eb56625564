"""The conformance kit: every contract test, runnable on any operator.

``check_operator(op)`` runs the checks below and returns a :class:`Report`;
``check_installed()`` runs them on the ``example()`` of every installed operator.
``medrecon plugins check NAME`` (or ``module:Class``) prints a report as a table,
``medrecon plugins check --all`` one line per installed operator; both exit
non-zero on a failure.  First-party plugins run it in their test suites; plugin
authors run it on theirs.

Checks
------
shapes
    ``forward`` maps ``(B, *domain_shape)`` to ``(B, *range_shape)`` with the
    declared real/complex dtype, and ``adjoint`` maps back.
adjoint-float64 / adjoint-float32
    The dot-product test.  For random ``x`` and ``y``::

        err = |<A x, y> - <x, A^H y>| / (||A x|| ||y||)

    (``<a, b> = sum(conj(a) b)``); by Cauchy-Schwarz ``err`` is a relative error
    that cannot be made small by accident.  Passes when ``err <= 1e-6``
    (float64) or ``<= 1e-4`` (float32).
spec-roundtrip
    ``spec()`` survives ``json.dumps``/``json.loads`` and the registry rebuilds
    an operator whose output equals the original's.
gradient
    Autograd's gradient of ``f(x) = Re <A x, w>`` equals ``A^H w`` (backward is
    the adjoint), and agrees with a central finite difference along a random
    direction.
slice-independence
    For per-slice operators: the output for a batch equals the outputs for its
    slices one at a time (``op.for_slices([k])`` on slice ``k`` for a slice-varying
    operator), and changing one slice changes only its own output.
for-slices
    For slice-varying operators (``slice_varying``, :mod:`medrecon.operators.base`), with
    ``S = n_slices`` and ``i = S - 1``, ``j = 0``: ``op.for_slices([i, j])`` applied to
    ``x[[i, j]]`` equals ``op(x)[[i, j]]`` and equals ``op.for_slices([i])`` and
    ``op.for_slices([j])`` applied separately (forward, adjoint and ``classical``);
    selections compose (``op.for_slices([i, j]).for_slices([1])`` is
    ``op.for_slices([j])``); a selection's spec rebuilds it; a batch of the wrong size and
    an out-of-range index raise :class:`medrecon.errors.InputError`.  Skipped for other
    operators.

A slice-varying operator takes batches of exactly ``n_slices`` slices, so every check
above runs it on a batch of ``n_slices`` (``batch`` is ignored; the gradient check too).
normal
    ``normal(x)`` equals ``adjoint(forward(x))`` (relative difference <= 1e-10 in float64),
    so that an operator's cheaper ``_normal`` computes ``A^H A``.
device-roundtrip
    With CUDA present: the operator on the GPU gives the CPU's result, and
    moving back to the CPU works.  Skipped without CUDA.
bad-shape
    A wrongly shaped input raises :class:`medrecon.errors.InputError`.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field

import torch

from medrecon.errors import InputError
from medrecon.operators.base import Operator

__all__ = ["CheckResult", "Report", "check_installed", "check_operator", "check_operator_class", "disk_phantom", "dot_product_error", "random_like_domain",
           "smooth_gaussian_prior", "summary_table",
           "tiny_network_prior"]


@dataclass
class CheckResult:
    """One check: its name, 'pass' / 'FAIL' / 'skip', and a short detail."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


@dataclass
class Report:
    """All checks run on one operator."""

    operator: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def table(self) -> str:
        """A plain-text pass/fail table."""
        w = max(len(r.name) for r in self.results) if self.results else 5
        lines = [f"conformance of {self.operator}", f"{'check':<{w}}  result  detail"]
        for r in self.results:
            lines.append(f"{r.name:<{w}}  {r.status:<6}  {r.detail}")
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _randn(shape, dtype, gen) -> torch.Tensor:
    if dtype.is_complex:
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        return torch.complex(torch.randn(shape, dtype=real, generator=gen),
                             torch.randn(shape, dtype=real, generator=gen))
    return torch.randn(shape, dtype=dtype, generator=gen)


def random_like_domain(op: Operator, batch: int, real_dtype=torch.float32, seed: int = 0):
    """A random image batch for ``op`` (complex when its domain is complex)."""
    gen = torch.Generator().manual_seed(seed)
    return _randn((batch, *op.domain_shape), op.domain_dtype(real_dtype), gen)


def _vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sum(a.conj() * b) if (a.is_complex() or b.is_complex()) else torch.sum(a * b)


def dot_product_error(op: Operator, real_dtype=torch.float64, batch: int = 2, seed: int = 0) -> float:
    """Relative dot-product error ``|<Ax,y> - <x,A^H y>| / (||Ax|| ||y||)``."""
    gen = torch.Generator().manual_seed(seed)
    x = _randn((batch, *op.domain_shape), op.domain_dtype(real_dtype), gen)
    y = _randn((batch, *op.range_shape), op.range_dtype(real_dtype), gen)
    dev = _device_of(op)
    x, y = x.to(dev), y.to(dev)
    with torch.no_grad():
        ax = op(x)
        aty = op.adjoint(y)
    lhs = _vdot(ax, y)
    rhs = _vdot(x.to(aty.dtype) if aty.is_complex() else x, aty)
    if not op.domain_is_complex:  # real image space: the inner product on the range is Re<., .>
        lhs = lhs.real
    denom = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return float(torch.abs(lhs - rhs) / denom)


def _device_of(op: Operator) -> torch.device:
    for t in list(op.buffers()) + list(op.parameters()):
        return t.device
    return torch.device("cpu")


def _rebuild_default(op: Operator, spec: dict) -> Operator:
    """The registry's rebuild of ``spec`` with the arrays ``op`` was built with
    (``op.spec_arrays``), or ``type(op).from_spec`` for an operator that is not installed as a
    plugin."""
    arrays = getattr(op, "spec_arrays", None) or None
    try:
        from medrecon.operators import operator_from_spec

        return operator_from_spec(spec, arrays=arrays)
    except Exception:  # noqa: BLE001 - not installed as a plugin
        return type(op).from_spec(spec, arrays=arrays) if arrays else type(op).from_spec(spec)


def check_operator(op: Operator, *, batch: int = 2, seed: int = 0, rebuild=None) -> Report:
    """Run every contract check on ``op`` and return a :class:`Report`.

    ``rebuild(spec) -> Operator`` rebuilds from a spec; by default the registry
    (:func:`medrecon.operator_from_spec`), falling back to ``type(op).from_spec``
    for an operator that is not installed as a plugin.

    The operator is deep-copied before precision or device changes, so ``op``
    itself is not modified.
    """
    report = Report(op.name)

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            status, detail = fn()
        except Exception as exc:  # noqa: BLE001 - a check that raises is a failure
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        report.results.append(CheckResult(name, status, detail, time.perf_counter() - t0))

    op32 = copy.deepcopy(op).with_precision(False)
    op64 = copy.deepcopy(op).with_precision(True)
    varying = bool(getattr(op, "slice_varying", False))
    if varying:
        batch = int(op.n_slices)

    def shapes():
        x = random_like_domain(op32, batch, seed=seed).to(_device_of(op32))
        with torch.no_grad():
            y = op32(x)
            if tuple(y.shape) != (batch, *op32.range_shape):
                return "FAIL", f"forward gave {tuple(y.shape)}, expected {(batch, *op32.range_shape)}"
            if y.dtype != op32.range_dtype(torch.float32):
                return "FAIL", f"forward gave dtype {y.dtype}, expected {op32.range_dtype()}"
            xb = op32.adjoint(y)
            if tuple(xb.shape) != (batch, *op32.domain_shape):
                return "FAIL", f"adjoint gave {tuple(xb.shape)}, expected {(batch, *op32.domain_shape)}"
            if xb.dtype != op32.domain_dtype(torch.float32):
                return "FAIL", f"adjoint gave dtype {xb.dtype}, expected {op32.domain_dtype()}"
        return "pass", f"{tuple(x.shape)} -> {tuple(y.shape)} {y.dtype}"

    def adjoint(opx, dtype, tol):
        def fn():
            err = dot_product_error(opx, dtype, batch=batch, seed=seed)
            return ("pass" if err <= tol else "FAIL"), f"relative error {err:.2e} (tol {tol:.0e})"
        return fn

    def spec_roundtrip():
        spec = json.loads(json.dumps(op32.spec()))
        op2 = rebuild(spec) if rebuild is not None else _rebuild_default(op32, spec)
        op2 = op2.with_precision(False).to(_device_of(op32))
        x = random_like_domain(op32, batch, seed=seed + 1).to(_device_of(op32))
        with torch.no_grad():
            d = torch.linalg.vector_norm(op32(x) - op2(x)) / torch.linalg.vector_norm(op32(x))
        if op2.spec() != spec:
            return "FAIL", "rebuilt operator reports a different spec"
        return ("pass" if float(d) <= 1e-6 else "FAIL"), f"relative difference {float(d):.1e}"

    def gradient():
        dev = _device_of(op64)
        gen = torch.Generator().manual_seed(seed + 2)
        nb = batch if varying else 1
        x = _randn((nb, *op64.domain_shape), op64.domain_dtype(torch.float64), gen).to(dev)
        w = _randn((nb, *op64.range_shape), op64.range_dtype(torch.float64), gen).to(dev)
        v = _randn((nb, *op64.domain_shape), op64.domain_dtype(torch.float64), gen).to(dev)

        def f(z):
            return _vdot(op64(z), w).real

        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg), xg)
        with torch.no_grad():
            expect = op64.adjoint(w)
            if not x.is_complex() and expect.is_complex():
                expect = expect.real
            err_adj = float(torch.linalg.vector_norm(g - expect) / torch.linalg.vector_norm(expect))
            h = 1e-3
            fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
            dd = _vdot(g, v).real
            err_fd = float(torch.abs(fd - dd) / (torch.abs(dd) + 1e-30))
        ok = err_adj <= 1e-6 and err_fd <= 1e-5
        return ("pass" if ok else "FAIL"), f"backward vs adjoint {err_adj:.1e}, finite difference {err_fd:.1e}"

    def slice_independence():
        if not op.per_slice:
            return "skip", "not a per-slice operator"
        dev = _device_of(op64)
        n = batch if varying else 3
        if n < 2:
            return "skip", "a slice-varying operator for one slice"
        x = random_like_domain(op64, n, torch.float64, seed=seed + 3).to(dev)
        with torch.no_grad():
            y = op64(x)
            singles = torch.cat([op64.for_slices([i])(x[i : i + 1]) for i in range(n)])
            d1 = float(torch.linalg.vector_norm(y - singles) / torch.linalg.vector_norm(y))
            x2 = x.clone()
            x2[1] = x2[1] * 2 + 1
            y2 = op64(x2)
            rest = [k for k in range(n) if k != 1]
            d2 = float(torch.linalg.vector_norm(y2[rest] - y[rest]) / torch.linalg.vector_norm(y))
        ok = d1 <= 1e-10 and d2 <= 1e-10
        return ("pass" if ok else "FAIL"), f"batch vs single {d1:.1e}, leakage {d2:.1e}"

    def for_slices():
        if not varying:
            return "skip", "not a slice-varying operator"
        dev = _device_of(op64)
        n = batch
        i, j = n - 1, 0
        gen = torch.Generator().manual_seed(seed + 5)
        x = _randn((n, *op64.domain_shape), op64.domain_dtype(torch.float64), gen).to(dev)
        y = _randn((n, *op64.range_shape), op64.range_dtype(torch.float64), gen).to(dev)
        pair, one_i, one_j = op64.for_slices([i, j]), op64.for_slices([i]), op64.for_slices([j])
        errs = {}

        def rel(a, b):
            return float(torch.linalg.vector_norm(a - b) / (torch.linalg.vector_norm(b) + 1e-300))

        with torch.no_grad():
            for what, full, apply in (("forward", op64(x), lambda o, k: o(x[k])),
                                      ("adjoint", op64.adjoint(y), lambda o, k: o.adjoint(y[k])),
                                      ("classical", op64.classical(op64(x)), lambda o, k: o.classical(op64(x)[k]))):
                sel = apply(pair, [i, j])
                apart = torch.cat([apply(one_i, [i]), apply(one_j, [j])])
                errs[what] = max(rel(sel, full[[i, j]]), rel(sel, apart))
            errs["compose"] = rel(pair.for_slices([1])(x[[j]]), one_j(x[[j]]))
            spec = json.loads(json.dumps(pair.spec()))
            rebuilt = (rebuild(spec) if rebuild is not None else _rebuild_default(op64, spec))
            rebuilt = rebuilt.with_precision(True).to(dev)
            errs["spec"] = rel(rebuilt(x[[i, j]]), pair(x[[i, j]])) if rebuilt.spec() == spec else float("inf")
        raised = []
        for bad in (lambda: op64(torch.cat([x, x[:1]])), lambda: pair(x[[i, j, j]]),
                    lambda: op64.for_slices([n])):
            try:
                bad()
                raised.append(False)
            except InputError:
                raised.append(True)
        worst = max(errs, key=errs.get)
        ok = errs[worst] <= 1e-10 and all(raised)
        detail = f"worst {worst} {errs[worst]:.1e}" + ("" if all(raised) else ", a bad batch or index did not raise")
        return ("pass" if ok else "FAIL"), detail

    def normal():
        x = random_like_domain(op64, batch, torch.float64, seed=seed + 6).to(_device_of(op64))
        with torch.no_grad():
            ref = op64.adjoint(op64(x))
            d = float(torch.linalg.vector_norm(op64.normal(x) - ref) / (torch.linalg.vector_norm(ref) + 1e-300))
        return ("pass" if d <= 1e-10 else "FAIL"), f"normal vs adjoint(forward) {d:.1e}"

    def device_roundtrip():
        if not torch.cuda.is_available():
            return "skip", "CUDA not available"
        cpu = copy.deepcopy(op32).to("cpu")
        gpu = copy.deepcopy(op32).to("cuda")
        x = random_like_domain(cpu, batch, seed=seed + 4)
        with torch.no_grad():
            yc = cpu(x)
            yg = gpu(x.cuda()).cpu()
            back = gpu.to("cpu")(x)
        d = float(torch.linalg.vector_norm(yc - yg) / torch.linalg.vector_norm(yc))
        d2 = float(torch.linalg.vector_norm(yc - back) / torch.linalg.vector_norm(yc))
        ok = d <= 1e-4 and d2 <= 1e-6
        return ("pass" if ok else "FAIL"), f"GPU vs CPU {d:.1e}, back on CPU {d2:.1e}"

    def bad_shape():
        bad = torch.zeros((batch if varying else 1, *[s + 1 for s in op32.domain_shape]), dtype=op32.domain_dtype())
        try:
            op32(bad)
        except InputError:
            return "pass", "wrong shape raises InputError"
        return "FAIL", "a wrongly shaped input did not raise InputError"

    run("shapes", shapes)
    run("adjoint-float64", adjoint(op64, torch.float64, 1e-6))
    run("adjoint-float32", adjoint(op32, torch.float32, 1e-4))
    run("spec-roundtrip", spec_roundtrip)
    run("gradient", gradient)
    run("slice-independence", slice_independence)
    run("for-slices", for_slices)
    run("normal", normal)
    run("device-roundtrip", device_roundtrip)
    run("bad-shape", bad_shape)
    return report


def check_operator_class(cls: type, *, device="cpu", label: str | None = None) -> Report:
    """:func:`check_operator` on ``cls.example()`` moved to ``device``; a class that is not an
    :class:`Operator` or whose example does not build gives a report whose ``example`` check fails."""
    label, t0 = label or getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls)), time.perf_counter()
    try:
        if not (isinstance(cls, type) and issubclass(cls, Operator)):
            raise TypeError(f"{cls!r} is not a medrecon Operator subclass")
        op = cls.example().to(device)
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a failed check, not a crash
        return Report(label, [CheckResult("example", "FAIL", f"{type(exc).__name__}: {exc}",
                                          time.perf_counter() - t0)])
    report = check_operator(op)
    report.operator = label
    report.results.insert(0, CheckResult("example", "pass", f"{tuple(op.domain_shape)} -> {tuple(op.range_shape)}",
                                         time.perf_counter() - t0))
    return report


def check_installed(*, device="cpu", names=None) -> list[Report]:
    """One :class:`Report` per installed operator plugin (entry point group ``medrecon.operators``,
    or those of ``names``), each from :func:`check_operator_class`; a plugin that fails to import
    (or whose name two distributions claim) gives a report with a failed ``import`` check."""
    from medrecon import registry
    from medrecon.errors import PluginError

    infos = registry.discover("medrecon.operators")
    wanted = sorted({i.name for i in infos} if names is None else set(names))
    reports = []
    for name in wanted:
        try:
            cls = registry.load("medrecon.operators", name)
        except PluginError as exc:
            reports.append(Report(name, [CheckResult("import", "FAIL", str(exc))]))
            continue
        reports.append(check_operator_class(cls, device=device, label=name))
    return reports


def summary_table(reports: list[Report]) -> str:
    """One line per report: operator, pass/FAIL, the failed checks (or the count passed), seconds."""
    w = max([len(r.operator) for r in reports] + [8])
    lines = [f"{'operator':<{w}}  result  seconds  detail"]
    for r in reports:
        failed = [c.name for c in r.results if not c.passed]
        detail = f"failed: {', '.join(failed)}" if failed else f"{sum(c.status == 'pass' for c in r.results)} passed"
        lines.append(f"{r.operator:<{w}}  {'pass' if r.passed else 'FAIL':<6}  "
                     f"{sum(c.seconds for c in r.results):7.1f}  {detail}")
    n_bad = sum(not r.passed for r in reports)
    lines.append(f"{len(reports) - n_bad} of {len(reports)} operators PASSED" if n_bad == 0 else
                 f"FAILED: {n_bad} of {len(reports)} operators")
    return "\n".join(lines)


# ------------------------------------------------------------------ small fixtures for sampler and engine tests
def disk_phantom(n_slices: int, size: int, *, seed: int = 0, noise_hu: float = 5.0):
    """A small CT volume for tests: slice ``k`` is a disc of ``40 + 10 k`` HU (radius size/3) in
    air (-1000 HU) plus Gaussian noise of ``noise_hu``; pixels 0.8 mm, slices 2 mm apart.

    >>> disk_phantom(3, 8).shape
    (3, 8, 8)
    """
    import numpy as np

    from medrecon.volume import Volume

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.float32)
    data = np.stack([disk * (40.0 + 10 * k) - 1000 * (1 - disk) for k in range(n_slices)])
    data += rng.normal(0, noise_hu, data.shape).astype(np.float32)
    return Volume(data, np.diag([0.8, 0.8, 2.0, 1.0]), {"modality": "CT", "units": "HU"})


def tiny_network_prior(size: int, *, modality: str = "ct", pixel_size_mm: float | None = 0.8, seed: int = 1,
                       scale: float = 0.05):
    """An untrained ``tiny`` diffusion prior whose every weight is drawn from N(0, scale^2)
    (MONAI zero-initialises the UNet's output layer, so a fresh network predicts eps = 0):
    a real network, in eval mode without gradients on its weights, for sampler and engine tests."""
    from medrecon.priors.model import DiffusionPrior, default_config

    extra = {} if pixel_size_mm is None else {"pixel_size_mm": pixel_size_mm}
    prior = DiffusionPrior(default_config(modality, image_size=size, preset="tiny", **extra))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for p in prior.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))
    return prior.eval().requires_grad_(False)


def smooth_gaussian_prior(size: int, *, mean: float = -500.0, std: float = 500.0):
    """A closed-form Gaussian prior over ``size x size`` images (constant ``mean``, smooth
    covariance of marginal ``std``; :mod:`medrecon.priors.gaussian`): exact epsilon, no network,
    for sampler and engine tests whose results must not depend on training."""
    from medrecon.priors.gaussian import GaussianPrior, smooth_covariance

    return GaussianPrior(torch.full((size, size), float(mean)), smooth_covariance(size, size, std=std))
