"""The one closeness check of the kernel parity tests: a bound per element, not per tensor.

An element passes when |got - ref| <= atol + rtol * |ref|. A max|got - ref| / max|ref|
score lets a kernel that zeroes one column pass in bf16 (that column's |ref| is small
beside the x50 outliers that set max|ref|); the per-element bound does not. NaN in `got`
(an element the kernel never wrote into a NaN-poisoned output) fails, since every gate
is written `not err <= bound`. Each caller states its (atol, rtol) per dtype and the
measured error of the correct kernel that justifies it.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Tol:
    """Per-element bound atol + rtol * |ref| for one output dtype."""

    atol: float
    rtol: float


@dataclasses.dataclass(frozen=True)
class Closeness:
    """What `compare` found: pass/fail, the worst element (largest err / bound) and its numbers."""

    what: str
    ok: bool
    index: tuple  # worst element's index in got/ref
    got: float
    ref: float
    bound: float  # atol + rtol * |ref| at that element
    ratio: float  # |got - ref| / bound at that element (inf for NaN); ok means ratio <= 1
    num_bad: int
    numel: int
    num_nonfinite: int = 0  # NaN/Inf elements of got (an unwritten NaN-poisoned element counts here)
    shape: tuple = ()  # the compared tensors' shape, and their dtypes (for the failure log)
    got_dtype: str = ""
    ref_dtype: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAIL: {self.num_bad} of {self.numel} elements out of bound"
        if self.num_nonfinite:
            verdict += f" ({self.num_nonfinite} NaN/Inf)"
        return (f"{self.what}: {verdict}; worst at {self.index}: got {self.got:.6g}, ref {self.ref:.6g}, "
                f"|diff| {abs(self.got - self.ref):.3g} vs bound {self.bound:.3g} ({self.ratio:.3g} of it)"
                + (f"; inputs {self.shape} got {self.got_dtype}, ref {self.ref_dtype}" if self.got_dtype else ""))


def compare(got: torch.Tensor, ref: torch.Tensor, tol: Tol, what: str = "output") -> Closeness:
    """Compare element by element in fp64 on ref's device; never raises on a mismatch (see assert_close).

    ref must be finite and not all zero (a comparison on zeros proves nothing); shapes must match.
    """
    assert got.shape == ref.shape, f"{what}: got shape {tuple(got.shape)}, ref {tuple(ref.shape)}"
    r = ref.detach().double()  # on ref's device: a benchmark's GPU tensors are not copied to the host
    g = got.detach().to(r.device).double()
    assert torch.isfinite(r).all(), f"{what}: the reference has non-finite values"
    assert r.abs().max() > 0, f"{what}: the reference is all zeros; the comparison would be vacuous"
    bound = tol.atol + tol.rtol * r.abs()
    ratio = ((g - r).abs() / bound).nan_to_num(nan=float("inf"))  # an unwritten NaN never passes
    bad = ~(ratio <= 1.0)
    flat = int(ratio.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape))
    return Closeness(what=what, ok=not bool(bad.any()), index=index, got=g.reshape(-1)[flat].item(),
                     ref=r.reshape(-1)[flat].item(), bound=bound.reshape(-1)[flat].item(),
                     ratio=ratio.reshape(-1)[flat].item(), num_bad=int(bad.sum()), numel=r.numel(),
                     num_nonfinite=int((~torch.isfinite(g)).sum()), shape=tuple(ref.shape),
                     got_dtype=str(got.dtype).removeprefix("torch."), ref_dtype=str(ref.dtype).removeprefix("torch."))


def assert_close(got: torch.Tensor, ref: torch.Tensor, tol: Tol, what: str = "output") -> Closeness:
    """compare(), raising AssertionError (naming the worst element) when any element is out of bound."""
    result = compare(got, ref, tol, what)
    assert result.ok, str(result)
    return result
