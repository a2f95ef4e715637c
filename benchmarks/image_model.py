"""Image-model oracle: is the truth the optimum of the model's image formation?

For each state of the adenylate-kinase transition, particles are rendered with the simulator's physics
(Peng form factors of every heavy atom, an atomic B-factor, exact pixel integrals at an oversampling,
the CTF on the fine grid; ``physics.scattering``), noise-free, at random poses and CTFs. The model's
structure (the base's rigid residues placed on the true residue frames, as the decoder would have them)
is then fitted to those images under one of the model's image formations, with the poses and CTFs
known, the amplitude profiled out in closed form, and the peptide-bond term of the cpu preset: per-residue
rigid corrections and (where learnt) the global Gaussian width, by Adam. A correct image model leaves
the structure where it is; a biased one moves it. Printed per (data variant, image model, state):

- ``drift``: C-alpha RMSD (A) of the fitted structure from the truth (no superposition: poses are known);
- ``gain``: nats per image the fit gained by moving away from the truth (the truth's deficit under the
  model, scaled to the SNR-0.1 noise level of the benchmark);
- ``mismatch``: nats per image of residual between simulator and model images of the fitted structure;
- ``sigma``: the (learnt) Gaussian width, A.

Run: ``.venv/bin/python benchmarks/image_model.py [--n 96] [--steps 150]`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
import warnings

import numpy as np
import roma
import torch

from atomvae.demo import ADK_BOX, ADK_PIXEL_SIZE, adk_inputs, docked_base
from atomvae.geometry.rotations import random_rotations
from atomvae.model.losses import backbone_continuity, neighbour_orientation, relative_orientations
from atomvae.physics import noise, scattering
from atomvae.physics.coarse_grain import coarse_grained_density, forward_scattering
from atomvae.physics.ctf import CTFParams, gaussian_blur
from atomvae.physics.render import render
from atomvae.simulate import SimulationConfig, _draw_ctf
from atomvae.structure.frames import backbone_frames, frames_to_coordinates, local_coordinates
from atomvae.structure.io import read_ensemble, read_structure

STATES = {"closed": 8, "intermediate": 48, "open": 88}
VARIANTS = {  # name: (pixel size A, atomic B-factor A^2, simulator oversampling)
    "standard": (ADK_PIXEL_SIZE, 20.0, 2),
    "bfactor+60": (ADK_PIXEL_SIZE, 80.0, 2),
    "px2.0-os4": (2.0, 20.0, 4),
}


@dataclasses.dataclass(frozen=True)
class ImageModel:
    name: str
    atoms: str  # "CA" | "heavy" | "residue"
    sigma: float  # A (start value when learnt)
    learn_sigma: bool
    weighted: bool = False  # heavy atoms weighted by forward scattering


MODELS = (
    ImageModel("CA s2.0 (cpu preset)", "CA", 2.0, False),
    ImageModel("heavy s1.0 (paper)", "heavy", 1.0, False),
    ImageModel("heavy f0 learnt s", "heavy", 1.0, True, weighted=True),
    ImageModel("residue f0 learnt s", "residue", 1.5, True),
    ImageModel("residue f0 s1.5", "residue", 1.5, False),
)


def fit(
    model: ImageModel,
    clean,
    rotation,
    shift,
    ctf,
    pixel_size,
    noise_sigma,
    base_topology,
    base_local,
    true_rot,
    true_trans,
    steps: int,
    lr: float = 0.03,
    orientation: float = 0.0,
    base_relative=None,
    start=None,
    anneal: float = 0.0,
):
    top = base_topology
    if model.atoms == "residue":
        local, residue, mass = coarse_grained_density(base_local.numpy(), top)
        local, residue = torch.as_tensor(local), torch.as_tensor(residue)
        weights = torch.as_tensor(mass)
    else:
        idx = top.select(model.atoms)
        local, residue = base_local[idx], torch.as_tensor(top.residue_index[idx])
        weights = torch.as_tensor(forward_scattering(top.element[idx])) if model.weighted else None
    n_idx, c_idx, ca_idx = (torch.as_tensor(top.atom_index(n)) for n in ("N", "C", "CA"))
    res_all = torch.as_tensor(top.residue_index)
    start_rot, start_trans = (true_rot, true_trans) if start is None else start
    rotvec = torch.zeros_like(true_trans, requires_grad=True)
    delta = torch.zeros_like(true_trans, requires_grad=True)
    log_sigma = torch.tensor(math.log(model.sigma), dtype=torch.float64, requires_grad=model.learn_sigma)
    params = [rotvec, delta] + ([log_sigma] if model.learn_sigma else [])
    opt = torch.optim.Adam(params, lr=lr)
    bonded = torch.as_tensor(top.bonded_to_next)

    def objective(extra: float = 0.0):
        y = gaussian_blur(clean, extra, pixel_size) if extra > 0 else clean
        rot = start_rot @ roma.rotvec_to_rotmat(rotvec)
        trans = start_trans + delta
        coords = frames_to_coordinates(rot, trans, local, residue)
        sigma = (log_sigma.exp() ** 2 + extra**2).sqrt()
        renders = render(coords, rotation, shift, ctf, clean.shape[-1], pixel_size, sigma, weights=weights)
        amplitude = (renders * y).sum() / renders.square().sum()  # least squares, profiled out
        nll = (y - amplitude * renders).square().sum(dim=(-2, -1)).mean() / (2 * noise_sigma**2)
        all_atoms = frames_to_coordinates(rot, trans, base_local, res_all)
        bond = backbone_continuity(all_atoms[c_idx], all_atoms[n_idx], bonded)
        structure = 100.0 * bond
        if orientation > 0:
            structure = structure + orientation * neighbour_orientation(rot, base_relative, bonded)
        return nll + structure, nll, trans

    start_nll = float(objective()[1].detach())
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * (0.1 ** (step / steps))
        opt.zero_grad()
        # coarse to fine: extra blur of data and renders, from ``anneal`` A to 0 over the first half
        loss, _, _ = objective(anneal * max(0.0, 1.0 - step / (0.5 * steps)))
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, end_nll, trans = objective()
    drift = float((trans - true_trans).square().sum(-1).mean().sqrt())  # frame origins are the C-alphas
    i, j = (int(np.flatnonzero(top.res_seq == k)[0]) for k in (55, 169))  # the NMP-LID gap of the demo
    gap_error = float((trans[i] - trans[j]).norm() - (true_trans[i] - true_trans[j]).norm())
    return {
        "drift": drift,
        "gap": gap_error,
        "gain": start_nll - float(end_nll),
        "mismatch": float(end_nll),
        "sigma": float(log_sigma.detach().exp()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=96, help="particles per state")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--states", default=",".join(STATES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--models", default="all", help="comma-separated indices into MODELS, or all")
    parser.add_argument(
        "--from-base",
        action="store_true",
        help="start the fit from the (open) base instead of the truth: can the data move it there?",
    )
    parser.add_argument(
        "--orientation",
        type=float,
        default=0.0,
        help="weight of the neighbour-orientation term towards the (open) base (cpu preset: 100)",
    )
    parser.add_argument("--lr", type=float, default=0.03, help="Adam's start (decays 10x over the fit)")
    parser.add_argument(
        "--anneal-sigma",
        type=float,
        default=0.0,
        help="coarse to fine: blur data and renders by this many A more at the start, down to 0 at mid-fit",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    inputs = adk_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        topology, frames = read_ensemble(inputs.trajectory, inputs.topology)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        base = read_structure(docked_base(inputs.base_pdb, frames, len(frames) - 1, Path(tmp) / "base.pdb"))
    center = frames.reshape(-1, 3).mean(axis=0)
    base_local = torch.as_tensor(local_coordinates(base.coords, base.topology), dtype=torch.float64)
    base_frames = backbone_frames(torch.as_tensor(base.coords - center), base.topology)
    base_relative = relative_orientations(base_frames[0])
    a, b = scattering.scattering_parameters(topology.element, dtype=torch.float32)
    models = MODELS if args.models == "all" else [MODELS[int(i)] for i in args.models.split(",")]
    print(
        f"{'variant':<12} {'image model':<22} {'state':<13} {'drift A':>8} {'gap err':>8} {'gain nats':>10} "
        f"{'mismatch':>9} {'sigma':>6} {'s':>5}"
    )
    for variant in args.variants.split(","):
        pixel_size, bfactor, oversample = VARIANTS[variant]
        box = round(ADK_BOX * ADK_PIXEL_SIZE / pixel_size)
        for state in args.states.split(","):
            frame = STATES[state]
            truth = torch.as_tensor(frames[frame] - center, dtype=torch.float64)
            true_rot, true_trans = backbone_frames(truth, topology)
            rng = np.random.default_rng(frame)
            rotation = random_rotations(
                args.n, generator=torch.Generator().manual_seed(frame), dtype=torch.float64
            )
            shift = torch.as_tensor(rng.normal(0, 2.0, (args.n, 2)))
            ctf = _draw_ctf(
                SimulationConfig(
                    ensemble=Path("."), output=Path("."), n_particles=args.n, box=box, pixel_size=pixel_size
                ),
                args.n,
                rng,
            )
            clean = torch.cat(
                [
                    scattering.phase_contrast_images(
                        truth.float().expand(8, -1, -1),
                        rotation[i : i + 8].float(),
                        shift[i : i + 8].float(),
                        a,
                        b,
                        ctf.index(slice(i, i + 8)).to(dtype=torch.float32),
                        box,
                        pixel_size,
                        bfactor=bfactor,
                        oversample=oversample,
                    )
                    for i in range(0, args.n, 8)
                ]
            ).double()
            noise_sigma = noise.snr_noise_sigma(clean, 0.1)
            for model in models:
                t0 = time.perf_counter()
                result = fit(
                    model,
                    clean,
                    rotation,
                    shift,
                    CTFParams(**ctf.as_dict()),
                    pixel_size,
                    noise_sigma,
                    base.topology,
                    base_local,
                    true_rot,
                    true_trans,
                    args.steps,
                    orientation=args.orientation,
                    base_relative=base_relative,
                    start=base_frames if args.from_base else None,
                    anneal=args.anneal_sigma,
                    lr=args.lr,
                )
                print(
                    f"{variant:<12} {model.name:<22} {state:<13} {result['drift']:8.2f} {result['gap']:8.2f} "
                    f"{result['gain']:10.2f} "
                    f"{result['mismatch']:9.2f} {result['sigma']:6.2f} {time.perf_counter() - t0:5.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
