"""Probe: does stage 1 (pose_mode "inferred", the amortised pose head) learn the poses of a small structure?

A 20-residue adenylate-kinase fragment (adk_open.pdb residues 1-20, asymmetric), CA atoms rendered with
1.5 A Gaussians in 32 px images of 1.5 A pixels, no CTF, uniformly random rotations, Gaussian noise at
a high SNR (noise sd 0.1 x the clean images' sd by default). Trains ``AtomVAE.loss(stage=1)`` with Adam on
batches of the fixed image set and prints, every ``--report`` steps, the median angle between the
rotation ``AtomVAE.encode`` returns and the true one (uniformly random rotations: median 126 deg). The
structure is fixed and chiral, so the truth is identifiable and angles are compared directly, with no
global alignment; ``--analyse`` checks the one exact ambiguity of a projection (the mirror image of the
structure seen through the mirrored pose) and prints the error deciles. Results: BENCHMARKS.md, "Amortised
stage 1 on a tiny problem".

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/stage1_poses.py --steps 2000
    ... --n-pose 64 | --model-sigma 0.06 | --render-sigma 4 | --lr 3e-4 | --rws q | --supervised
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb
from torch.distributions import Normal

from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.losses import gaussian_log_likelihood
from atomvae.model.pose import latent_to_pose
from atomvae.model.vae import AtomVAE
from atomvae.physics.render import render_projections
from atomvae.structure.io import read_structure

BOX, PIXEL_SIZE = 32, 1.5


def fragment(n_residues: int):
    """Topology and centred coordinates (A, 3) of adk residues 1..n_residues."""
    structure = read_structure(PDB_small)
    keep = np.nonzero(structure.topology.residue_index < n_residues)[0]
    coords = np.asarray(structure.coords)[keep]
    return structure.topology.subset(keep), coords - coords.mean(axis=0)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (degrees) between rotation matrices a, b (..., 3, 3)."""
    trace = (a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0)))


def make_data(n_images: int, n_residues: int, relative_noise: float, render_sigma: float, seed: int):
    topology, coords = fragment(n_residues)
    ca = topology.select("CA")
    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n_images, generator=generator, dtype=torch.float64)
    shifts = torch.zeros(n_images, 2, dtype=torch.float64)
    clean = render_projections(torch.as_tensor(coords[ca]), rotations, shifts, BOX, PIXEL_SIZE, render_sigma)
    noise_sigma = relative_noise * float(clean.std())
    images = clean + noise_sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return topology, coords, images.float(), rotations.float(), noise_sigma


def rws_loss(
    model: AtomVAE,
    images: torch.Tensor,
    n_pose: int,
    generator: torch.Generator,
    reparam: bool,
    weighting: str,
) -> torch.Tensor:
    """Reweighted wake-sleep: the pose head fits its own importance-weighted samples (weights
    p(y|z) p(z) / q(z|y), or p(y|z) alone), the amplitude the importance-weighted bound."""
    h = model.encoder(images)
    mu, sigma = (t[:, 0] for t in model.pose_head(h, h.new_zeros(len(h), 1, model.config.decoded_dim)))
    z = mu[:, None] + sigma[:, None] * torch.randn(len(h), n_pose, 8, generator=generator)
    rotation, shift = latent_to_pose(z if reparam else z.detach(), model.config.shift_scale)
    predicted = model.render_images(model.base_render_coords.expand(len(h), 1, -1, 3), rotation, shift, None)
    log_lik = gaussian_log_likelihood(images[:, None], predicted, model.noise_sigma)
    log_q = Normal(mu[:, None], sigma[:, None]).log_prob(z.detach()).sum(-1)
    log_w = log_lik
    if weighting == "full":
        log_w = log_w + Normal(0.0, 1.0).log_prob(z.detach()).sum(-1) - log_q.detach()
    weights = torch.softmax(log_w.detach(), dim=1)
    bound = torch.logsumexp(log_w, dim=1) - math.log(n_pose)
    return -(weights * log_q).sum(1).mean() - bound.mean()


def supervised_loss(model: AtomVAE, images: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Upper-bound baseline / warm start: squared Frobenius distance of the pose head's mean rotation to
    the truth, plus its mean shift squared in pixels."""
    h = model.encoder(images)
    mu, _ = model.pose_head(h, model.decoder.representation(model.conf_posterior(h)[0].detach()).detach())
    predicted, shift = latent_to_pose(mu, model.config.shift_scale)  # the images are centred: shift 0
    rotation_error = (predicted - rotations).square().sum(dim=(-2, -1))
    return (rotation_error + (shift / PIXEL_SIZE).square().sum(-1)).mean()


def analyse(predicted: torch.Tensor, truth: torch.Tensor, errors: torch.Tensor) -> None:
    print("error deciles (deg)", torch.quantile(errors, torch.linspace(0.1, 0.9, 9)).round().tolist())
    # The mirror ambiguity of a projection: R_pred = M R_true S with M = diag(1, 1, -1) and one fixed
    # improper S (the structure's near-mirror symmetry) would make R_true^T M R_pred the same for all.
    bad = errors > 90
    mirrored = truth[bad].transpose(-1, -2) @ torch.diag(torch.tensor([1.0, 1.0, -1.0])) @ predicted[bad]
    spread = (mirrored - mirrored.mean(0)).square().sum(dim=(-2, -1))
    print(
        f"errors > 90 deg: {float(bad.float().mean()):.2f}; of those consistent with one mirror map: "
        f"{float((spread < 0.5).float().mean()):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--residues", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.1, help="noise sd relative to the clean images' sd")
    parser.add_argument("--render-sigma", type=float, default=1.5, help="A (data and model)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-pose", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta-pose", type=float, default=0.01)
    parser.add_argument("--model-sigma", type=float, help="likelihood noise sigma (default: the true one)")
    parser.add_argument("--encoder", default="256,128", help="encoder widths")
    parser.add_argument(
        "--rws", choices=("q", "q+reparam"), help="reweighted wake-sleep update of the pose head"
    )
    parser.add_argument("--rws-weights", choices=("full", "lik"), default="full")
    parser.add_argument("--supervised", action="store_true", help="baseline: regress onto the true rotations")
    parser.add_argument(
        "--warm-steps",
        type=int,
        default=0,
        help="first regress onto the true rotations for this many steps (a warm start), then train stage 1",
    )
    parser.add_argument(
        "--analyse", action="store_true", help="error deciles and the mirror check at the end"
    )
    parser.add_argument(
        "--sigma-bias",
        type=float,
        help="initial bias of the pose head's sigma layer (sigma = softplus(b) + 1e-5; default 0: 0.69)",
    )
    parser.add_argument("--stage1-lr", type=float, help="learning rate after the warm start (default: --lr)")
    parser.add_argument(
        "--zero-d", action="store_true", help="feed the pose head d = 0 everywhere (the old stage-1 input)"
    )
    parser.add_argument(
        "--freeze-trunk",
        action="store_true",
        help="after the warm start train only the pose head and the amplitude",
    )
    parser.add_argument("--report", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    topology, coords, images, rotations, noise_sigma = make_data(
        args.images, args.residues, args.noise, args.render_sigma, args.seed
    )
    widths = tuple(int(w) for w in args.encoder.split(","))
    config = ModelConfig(
        image_size=BOX,
        latent_conf=2,
        encoder_widths=widths,
        decoder_width=32,
        decoder_blocks=1,
        decoded_dim=32,
        render_atoms="CA",
        render_sigma=args.render_sigma,
    )
    torch.manual_seed(args.seed)
    model = AtomVAE(
        config, topology, coords, box=BOX, pixel_size=PIXEL_SIZE, noise_sigma=args.model_sigma or noise_sigma
    )
    if args.zero_d:
        representation = model.decoder.representation
        model.decoder.representation = lambda z: torch.zeros_like(representation(z))
    if args.sigma_bias is not None:
        with torch.no_grad():
            model.pose_head.sigma.bias.fill_(args.sigma_bias)
    amplitude = model.initialise_amplitude(images[:256], None, generator=torch.Generator().manual_seed(1))
    print(f"noise_sigma {noise_sigma:.4g}, amplitude from variance matching {amplitude:.3f} (true 1)")
    optimizer = torch.optim.Adam(model.trainable_parameters(1), lr=args.lr)
    weights = LossWeights(beta_pose=args.beta_pose)
    generator = torch.Generator().manual_seed(args.seed + 1)
    started = time.process_time()
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, args.images, (args.batch,), generator=generator)
        if step == args.warm_steps + 1 and step > 1:
            # a fresh Adam: moments from the regression's tiny gradients would turn the likelihood's
            # 1e4-times larger first gradients into huge steps
            parameters = model.trainable_parameters(1)
            if args.freeze_trunk:
                parameters = [*model.pose_head.parameters(), model.log_amplitude]
            optimizer = torch.optim.Adam(parameters, lr=args.stage1_lr or args.lr)
        if args.supervised or step <= args.warm_steps:
            loss = supervised_loss(model, images[batch], rotations[batch])
        elif args.rws:
            loss = rws_loss(
                model, images[batch], args.n_pose, generator, args.rws == "q+reparam", args.rws_weights
            )
        else:
            loss = model.loss(
                images[batch],
                None,
                stage=1,
                n_conf=1,
                n_pose=args.n_pose,
                weights=weights,
                generator=generator,
            ).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.report == 0 or step == args.steps:
            encoded = model.encode(images)
            errors = rotation_angle_deg(encoded["rotation"], rotations)
            print(
                f"step {step:5d}  loss {float(loss.detach()):10.1f}  "
                f"amplitude {float(model.amplitude.detach()):.3f}  "
                f"pose sigma {float(encoded['pose_sigma'][:, 2:].mean()):.3f}  "
                f"|v1| {float(encoded['pose_mu'][:, 2:5].norm(dim=-1).mean()):.2f}  "
                f"median error {float(errors.median()):6.1f} deg  "
                f"< 10 deg {float((errors < 10).float().mean()):.2f}  "
                f"cpu {time.process_time() - started:.0f} s",
                flush=True,
            )
    if args.analyse:
        analyse(encoded["rotation"], rotations, errors)


if __name__ == "__main__":
    main()
