"""SpinQuant (Liu et al. 2024): R1 and R2 learned by Cayley SGD on calibration data.

The rotations of quant/rotation.py leave the float model's function unchanged for *any*
orthogonal R1 (dim x dim, the residual stream) and R2 (head_dim x head_dim, one per layer on
v_proj / o_proj); the quantized model's loss does depend on them. SpinQuant starts from the
random Hadamard (QuaRot) and lowers that loss:
  objective  next-token cross-entropy of the *quantized* network on calibration windows of the
             train split (quant.calibrate): weights fake-quantized with the RTN grid that will be
             used (bits, group size, sym), activations per token (act_bits), K/V as the cache
             stores them (kv_bits), every rounding straight-through (x + (q(x) - x).detach());
             bits=None leaves the weights unrounded: SpinQuant's recipe when GPTQ quantizes the
             weights afterwards (its README: optimize for W16A4KV4, then GPTQ W4A4KV4), since
             GPTQ's error feedback, not RTN's rounding, decides the weight error there;
  parameters R1, R2 only (the model's weights stay frozen); R4 stays the fixed Hadamard;
  update     Cayley SGD on the orthogonal group (Li, Li & Todorovic 2020, the optimizer
             SpinQuant's code uses): with gradient G of R, the skew matrix A = G R^T - R G^T
             gives the exact Cayley retraction R <- (I + t/2 A)^-1 (I - t/2 A) R, step
             t = min(lr, 1 / ||A||_F) (their bound). (I + t/2 A)^-1 (I - t/2 A) is orthogonal
             for skew A, so R stays orthogonal to fp64 rounding; it is checked after every step
             (a plain SGD step R - t G fails the check).
After learning, quant.rotation.rotate merges the learned R1 / R2 into the weights exactly as
the Hadamard ones.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from quant.rotation import random_hadamard, rotate
from quant.rtn import QuantizationError, find_params, fake_quant, quantize_activation

ORTHO_TOL = 1e-8  # max |R^T R - I| of an fp64 rotation: Cayley steps measure ~1e-14; one SGD step ~1e-3


def orthogonality_error(R: torch.Tensor) -> float:
    """max |R^T R - I|."""
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return float((R.T @ R - eye).abs().max())


def cayley_step(R: torch.Tensor, G: torch.Tensor, lr: float) -> torch.Tensor:
    """One Cayley SGD step of orthogonal R (n, n) fp64 along -G (module docstring)."""
    A = G @ R.T - R @ G.T  # skew-symmetric: the Riemannian gradient, as a rotation generator
    t = min(lr, 1.0 / (float(A.norm()) + 1e-12))
    eye = torch.eye(R.shape[0], dtype=R.dtype, device=R.device)
    return torch.linalg.solve(eye + (t / 2) * A, (eye - (t / 2) * A) @ R)


def sgd_step(R: torch.Tensor, G: torch.Tensor, lr: float) -> torch.Tensor:
    """Plain Euclidean SGD R - lr G / ||G||: leaves the orthogonal group (the tests' planted fault)."""
    return R - lr * G / (float(G.norm()) + 1e-12)


def _ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    return x + (xq - x).detach()


def fake_quant_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """w (out, in) rounded to quant.rtn's grid (the one rtn_quantize stores), straight-through."""
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    g = w.detach().float().reshape(-1, gs)
    scale, zero = find_params(g, bits, sym)
    return _ste(w, fake_quant(g, scale[:, None], zero[:, None], bits).reshape(out_f, in_f).to(w.dtype))


class _Objective:
    """The quantized network's loss as a function of (R1, [R2 per layer]) on a frozen copy of the model."""

    def __init__(self, model: nn.Module, spec: tuple, quantized: set, kv_bits: Optional[int], seed: int):
        cfg = model.config
        self.cfg, self.spec = cfg, spec
        self.work = copy.deepcopy(model)
        eye = torch.eye(cfg.dim, dtype=torch.float64)
        # norms folded, head untied, R4 merged (fixed Hadamard), R1 = R2 = I: the learned ones enter below
        rotate(self.work, seed, True, r1=eye, r2=[torch.eye(cfg.head_dim, dtype=torch.float64)] * cfg.n_layers,
               kind="identity")
        if kv_bits is not None:
            from cache.kv_quant import install_kv_quant
            install_kv_quant(self.work, kv_bits)
        for p in self.work.parameters():
            p.requires_grad_(False)
        self.base = {n: p.detach() for n, p in self.work.named_parameters()}
        self.quantized = {n + ".weight" for n in quantized}  # names in the work model's tree
        self.hooks = []
        if spec[3] is not None:
            for name, mod in self.work.named_modules():
                if name in quantized:
                    self.hooks.append(mod.register_forward_pre_hook(
                        lambda m, args: (_ste(args[0], quantize_activation(args[0].detach(), spec[3])),)))

    def close(self) -> None:
        """Remove the activation hooks."""
        for h in self.hooks:
            h.remove()

    def weights(self, R1: torch.Tensor, R2s: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter of the work model, rotated by R1 / R2 and fake-quantized where it will be."""
        cfg, b = self.cfg, self.base
        hd, dim = cfg.head_dim, cfg.dim
        out = {"model.embed_tokens.weight": b["model.embed_tokens.weight"] @ R1,
               "lm_head.weight": b["lm_head.weight"] @ R1}
        for i, R2 in enumerate(R2s):
            p = f"model.layers.{i}."
            for n in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj"):
                out[p + n + ".weight"] = b[p + n + ".weight"] @ R1
            wv = (b[p + "self_attn.v_proj.weight"] @ R1).view(cfg.n_kv_heads, hd, dim)
            out[p + "self_attn.v_proj.weight"] = (R2.T[None] @ wv).reshape(cfg.n_kv_heads * hd, dim)
            wo = (R1.T @ b[p + "self_attn.o_proj.weight"]).view(dim, cfg.n_heads, hd)
            out[p + "self_attn.o_proj.weight"] = (wo @ R2).reshape(dim, cfg.n_heads * hd)
            out[p + "mlp.down_proj.linear.weight"] = R1.T @ b[p + "mlp.down_proj.linear.weight"]
        bits, gs, sym, _ = self.spec
        for n in self.quantized if bits is not None else ():
            out[n] = fake_quant_weight(out[n], bits, gs, sym)
        return {**b, **out}

    def loss(self, ids: torch.Tensor, R1: torch.Tensor, R2s: list[torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy of the quantized, rotated network on ids (n, T)."""
        logits = torch.func.functional_call(self.work, self.weights(R1, R2s), (ids,))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def objective_name(spec: tuple, kv_bits: Optional[int]) -> str:
    """What the objective rounds, e.g. "W4A4KV4", "W16A4KV4" (weights unrounded), "W4g128A16"."""
    bits, gs, _, act = spec
    return (f"W{bits or 16}" + (f"g{gs}" if bits and gs != -1 else "") + f"A{act or 16}"
            + (f"KV{kv_bits}" if kv_bits else ""))


def learn_rotations(model: nn.Module, calib: torch.Tensor, spec: tuple, quantized: set, *,
                    kv_bits: Optional[int] = None, steps: int = 20, lr: float = 1.0, batch_size: int = 2,
                    seed: int = 0, progress: bool = False,
                    update: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = cayley_step
                    ) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
    """(R1 fp64, [R2 fp64 per layer], report) learned from the random Hadamard on calib (n, T).

    spec: (bits, group_size, sym, act_bits) of the RTN grid the objective rounds to (bits None:
    weights unrounded; then act_bits or kv_bits must be set, else the loss does not depend on R);
    quantized: the qualified names (as in the rotated model) of the linears that will be
    quantized. report: {"loss_start", "loss_end"} on all of calib (the quantized objective),
    "losses" per step (on that step's batch), "ortho_err" the worst max|R^T R - I| seen, "kept":
    whether the learned rotations are returned (loss_end < loss_start; else the Hadamard start is).
    The model itself is not changed. QuantizationError if a step leaves the orthogonal group.
    """
    from tqdm import tqdm

    if spec[0] is None and spec[3] is None and kv_bits is None:
        raise QuantizationError("spinquant: nothing is quantized in the objective (weights, activations and KV "
                                "all float), so every rotation gives the same loss")
    cfg = model.config
    dev = model.model.embed_tokens.weight.device
    calib = calib.to(dev)
    obj = _Objective(model, spec, {n if not n.endswith("down_proj") else n + ".linear" for n in quantized},
                     kv_bits, seed)
    R1 = random_hadamard(cfg.dim, seed).to(dev)
    R2s = [random_hadamard(cfg.head_dim, seed + 1).to(dev) for _ in range(cfg.n_layers)]
    start = (R1, R2s)

    def full_loss() -> float:
        with torch.no_grad():
            return float(sum(obj.loss(calib[i:i + batch_size], R1.float(), [r.float() for r in R2s])
                             * len(calib[i:i + batch_size]) for i in range(0, len(calib), batch_size)) / len(calib))

    report = {"objective": objective_name(spec, kv_bits), "loss_start": full_loss(), "losses": [], "ortho_err": 0.0}
    try:
        with torch.enable_grad():
            bar = tqdm(range(steps), desc="spinquant cayley", unit="step", disable=not progress)
            for step in bar:
                i = (step * batch_size) % len(calib)
                r1 = R1.float().requires_grad_(True)
                r2s = [r.float().requires_grad_(True) for r in R2s]
                loss = obj.loss(calib[i:i + batch_size], r1, r2s)
                grads = torch.autograd.grad(loss, [r1, *r2s])
                R1 = update(R1, grads[0].double(), lr)
                R2s = [update(r, g.double(), lr) for r, g in zip(R2s, grads[1:])]
                err = max(orthogonality_error(r) for r in (R1, *R2s))
                report["ortho_err"] = max(report["ortho_err"], err)
                if not err <= ORTHO_TOL:
                    raise QuantizationError(f"spinquant step {step}: rotation is no longer orthogonal "
                                            f"(max |R^T R - I| = {err:.2e} > {ORTHO_TOL:g})")
                report["losses"].append(float(loss.detach()))
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        report["loss_end"] = full_loss()
        report["kept"] = report["loss_end"] < report["loss_start"]
        if not report["kept"]:  # Cayley SGD did not help on the calibration windows: keep the Hadamard start
            R1, R2s = start
    finally:
        obj.close()
    return R1, R2s, report
