"""Probe of the amortised stage 1 (issue 11, goal 1): measure each suspect on a tiny problem.

A 30-residue adenylate-kinase fragment (adk_open.pdb residues 1-30, CA atoms, 1.5 A Gaussians), 32 px images
of 1.5 A pixels, no CTF, uniformly random rotations, no shift, Gaussian noise at a given SNR (signal
variance over noise variance, per pixel over the box). ``measure`` prints the suspects at initialisation and
at a supervised warm start; ``train`` runs a stage-1 variant and prints the median rotation error of the
poses ``AtomVAE.encode`` returns (random rotations: 126 deg). Results: BENCHMARKS.md, "Amortised stage 1
on a tiny problem".

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/amortised_poses.py measure
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/amortised_poses.py train --warm-steps 400 --steps 300
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from MDAnalysisTests.datafiles import PDB_small  # adk_open.pdb

from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.losses import gaussian_log_likelihood
from atomvae.model.pose import latent_to_pose
from atomvae.model.vae import AtomVAE
from atomvae.physics.render import render_projections
from atomvae.structure.io import read_structure

BOX, PIXEL_SIZE, RENDER_SIGMA = 32, 1.5, 1.5


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    trace = (a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0)))


def problem(n_images: int, n_residues: int, snr: float, seed: int, **model_fields):
    structure = read_structure(PDB_small)
    keep = np.nonzero(structure.topology.residue_index < n_residues)[0]
    topology, coords = structure.topology.subset(keep), np.asarray(structure.coords)[keep]
    coords = coords - coords.mean(axis=0)
    ca = topology.select("CA")
    generator = torch.Generator().manual_seed(seed)
    rotations = random_rotations(n_images, generator=generator, dtype=torch.float64)
    shifts = torch.zeros(n_images, 2, dtype=torch.float64)
    clean = render_projections(torch.as_tensor(coords[ca]), rotations, shifts, BOX, PIXEL_SIZE, RENDER_SIGMA)
    noise_sigma = math.sqrt(float(clean.var()) / snr)
    images = clean + noise_sigma * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    config = ModelConfig(
        image_size=BOX,
        latent_conf=4,
        encoder_widths=(256, 256),
        decoder_width=32,
        decoder_blocks=1,
        decoded_dim=32,
        render_atoms="CA",
        render_sigma=RENDER_SIGMA,
        **model_fields,
    )
    torch.manual_seed(seed)
    model = AtomVAE(config, topology, coords, box=BOX, pixel_size=PIXEL_SIZE, noise_sigma=noise_sigma)
    with torch.no_grad():
        model.log_amplitude.zero_()  # the true amplitude: the suspects are measured without this one
    return model, images.float(), rotations.float()


def pose_inputs(model: AtomVAE, images: torch.Tensor, d_source: str, n_conf: int = 1):
    """h and the pose head's posterior (B, Kc, 8), d from the conformation posterior's samples, mean or 0."""
    h = model.encoder(images)
    with torch.no_grad():
        mu_c, sigma_c = model.conf_posterior(h)
        if d_source == "sample":
            z = mu_c[:, None] + sigma_c[:, None] * torch.randn(len(h), n_conf, mu_c.shape[-1])
        else:
            z = mu_c[:, None].expand(-1, n_conf, -1)
        d = model.decoder.representation(z)
        if d_source == "zero":
            d = torch.zeros_like(d)
    return model.pose_head(h, d)


def measure(args) -> None:
    model, images, rotations = problem(args.images, args.residues, args.snr, args.seed)
    base = model.base_render_coords.expand(len(images), -1, 3)
    print(f"noise sigma {float(model.noise_sigma):.4g}; images {tuple(images.shape)}")
    # 1. The likelihood's scale and width: log-lik at the truth and at rotations off by an angle.
    with torch.no_grad():
        axis = torch.nn.functional.normalize(torch.randn(len(images), 3), dim=-1)
        truth = gaussian_log_likelihood(
            images, model.render_images(base, rotations, torch.zeros(len(images), 2), None), model.noise_sigma
        )
        for angle in (0, 2, 5, 10, 20, 30, 60, 120):
            turn = rotvec(axis * math.radians(angle))
            ll = gaussian_log_likelihood(
                images,
                model.render_images(base, turn @ rotations, torch.zeros(len(images), 2), None),
                model.noise_sigma,
            )
            print(
                f"  log-lik at {angle:3d} deg off the truth minus at truth: median "
                f"{float((ll - truth).median()):10.1f} nats"
            )
    # 2. At initialisation: the pose posterior's spread, the 6D mean's norm, the effect of d's sampling noise.
    with torch.no_grad():
        mu, sigma = pose_inputs(model, images, "sample", n_conf=2)
        r_mean, _ = latent_to_pose(mu, model.config.shift_scale)
        spread = rotation_angle_deg(r_mean[:, 0], r_mean[:, 1])
        z = mu[:, 0] + sigma[:, 0] * torch.randn_like(mu[:, 0])
        r_sample, shift_sample = latent_to_pose(z, model.config.shift_scale)
        print(
            f"init: |v1| of the mean {float(mu[..., 2:5].norm(dim=-1).median()):.3f}, pose sigma "
            f"{float(sigma[..., 2:].median()):.3f}, "
            f"shift sigma {float(sigma[..., :2].median() * model.config.shift_scale):.2f} A"
        )
        print(
            f"init: angle between a pose sample and the mean: median "
            f"{float(rotation_angle_deg(r_sample, r_mean[:, 0]).median()):.1f} deg; "
            f"|sample shift| median {float(shift_sample.norm(dim=-1).median()):.2f} A"
        )
        print(
            f"init: angle between the means at two conformation samples (d(z) noise): median "
            f"{float(spread.median()):.1f} deg"
        )
        print(
            f"init: mean rotation vs truth: median "
            f"{float(rotation_angle_deg(r_mean[:, 0], rotations).median()):.1f} deg"
        )
    # 3. Warm start by regression, then the same measures and per-image gradient sizes.
    warm_start(model, images, rotations, args.warm_steps, d_source=args.d_source)
    with torch.no_grad():
        mu, sigma = pose_inputs(model, images, "sample", n_conf=2)
        r_mean, _ = latent_to_pose(mu, model.config.shift_scale)
        mu_m, _ = pose_inputs(model, images, "mean")
        r_m, _ = latent_to_pose(mu_m[:, 0], model.config.shift_scale)
        print(
            f"warm ({args.warm_steps} steps, d {args.d_source}): error at d(mu_c) "
            f"{float(rotation_angle_deg(r_m, rotations).median()):.1f} deg, "
            f"at d(z) {float(rotation_angle_deg(r_mean[:, 0], rotations).median()):.1f} deg; "
            f"two d(z) samples differ by "
            f"{float(rotation_angle_deg(r_mean[:, 0], r_mean[:, 1]).median()):.1f} deg; "
            f"|v1| {float(mu[..., 2:5].norm(dim=-1).median()):.3f}"
        )
    # Per-image gradient of the log-likelihood at the mean pose w.r.t. the 6D latent: size spread.
    mu_m = mu_m[:, 0].detach().requires_grad_(True)
    r, s = latent_to_pose(mu_m, model.config.shift_scale)
    ll = gaussian_log_likelihood(images, model.render_images(base, r, s, None), model.noise_sigma)
    (grad,) = torch.autograd.grad(ll.sum(), mu_m)
    norms = grad.norm(dim=-1)
    err = rotation_angle_deg(r.detach(), rotations)
    q = torch.quantile(norms, torch.tensor([0.1, 0.5, 0.9]))
    print(
        f"per-image |d loglik / d mu_pose| deciles 10/50/90: {q.round().tolist()}; "
        f"median for error < 10 deg {float(norms[err < 10].median()):.0f}, > 30 deg "
        f"{float(norms[err > 30].median()):.0f}"
    )


def rotvec(v: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) from rotation vectors (..., 3) (Rodrigues)."""
    angle = v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = v / angle
    zero = torch.zeros_like(k[..., 0])
    cross = torch.stack(
        [zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0], -k[..., 1], k[..., 0], zero], dim=-1
    ).reshape(*k.shape[:-1], 3, 3)
    a = angle[..., None]
    return torch.eye(3) + torch.sin(a) * cross + (1 - torch.cos(a)) * cross @ cross


def warm_start(
    model, images, rotations, steps: int, d_source: str, lr: float = 1e-3, batch: int = 32, seed: int = 7
) -> None:
    """Regress the pose head's mean (rotation, and shift onto 0) on the truth."""
    if steps <= 0:
        return
    optimizer = torch.optim.Adam([*model.encoder.parameters(), *model.pose_head.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=generator)
        mu, _ = pose_inputs(model, images[idx], d_source)
        r, s = latent_to_pose(mu[:, 0], model.config.shift_scale)
        loss = ((r - rotations[idx]).square().sum(dim=(-2, -1)) + (s / PIXEL_SIZE).square().sum(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def supervised(args) -> None:
    """How fast the network fits exact targets: regression on the true poses, error every --report steps."""
    model, images, rotations = problem(args.images, args.residues, args.snr, args.seed)
    started = time.process_time()
    for step in range(args.report, args.steps + 1, args.report):
        warm_start(model, images, rotations, args.report, args.d_source, lr=args.lr, seed=step)
        with torch.no_grad():
            mu, _ = pose_inputs(model, images, "mean")
            err = rotation_angle_deg(latent_to_pose(mu[:, 0], model.config.shift_scale)[0], rotations)
        print(
            f"supervised step {step:5d}  median error {float(err.median()):6.1f} deg  cpu "
            f"{time.process_time() - started:.0f} s",
            flush=True,
        )


def stage1_loss(model, images, args, step: int) -> torch.Tensor:
    """The stage-1 objective with the probe's knobs (d source, tempering, per-image scaling)."""
    mu, sigma = pose_inputs(model, images, args.d_source)
    mu, sigma = mu[:, 0], sigma[:, 0]
    if args.fixed_sigma is not None:
        sigma = torch.full_like(sigma, args.fixed_sigma)
    eps = torch.randn(len(images), args.n_pose, 8)
    z = mu[:, None] + sigma[:, None] * eps
    r, s = latent_to_pose(z, model.config.shift_scale)
    base = model.base_render_coords.expand(len(images), 1, -1, 3)
    predicted = model.render_images(base, r, s, None)
    temperature = 1.0
    if args.anneal_steps:
        temperature = max(1.0, args.temperature ** (1 - step / args.anneal_steps))
    ll = gaussian_log_likelihood(images[:, None], predicted, model.noise_sigma) / temperature
    bound = torch.logsumexp(ll, dim=1) - math.log(args.n_pose)
    kl = 0.5 * (sigma.square() + mu.square() - 1 - sigma.square().log()).sum(-1)
    per_image = -bound + args.beta_pose * kl
    if args.per_image_scale:
        per_image = per_image / per_image.detach().abs().clamp_min(1.0)
    return per_image.mean()


def hypothesis_loss(model, images, args, step: int) -> tuple[torch.Tensor, float]:
    """Regress the head's mean pose on the best of several scored hypotheses (no gradient through the
    scoring): the head's current mean, args.local perturbations of it and args.global_ random rotations."""
    mu, _ = pose_inputs(model, images, args.d_source)
    r_mean, s_mean = latent_to_pose(mu[:, 0], model.config.shift_scale)
    b = len(images)
    with torch.no_grad():
        candidates = [r_mean[:, None]]
        if args.local:
            angle = math.radians(args.local_deg) * torch.randn(b, args.local, 1).abs()
            axis = torch.nn.functional.normalize(torch.randn(b, args.local, 3), dim=-1)
            candidates.append(rotvec(axis * angle) @ r_mean[:, None])
        if args.global_:
            candidates.append(random_rotations(b * args.global_).reshape(b, args.global_, 3, 3))
        r_cand = torch.cat(candidates, dim=1)
        base = model.base_render_coords.expand(b, 1, -1, 3)
        shift = s_mean[:, None].expand(-1, r_cand.shape[1], -1)
        ll = gaussian_log_likelihood(
            images[:, None], model.render_images(base, r_cand, shift, None), model.noise_sigma
        )
        best = ll.argmax(dim=1)
        target = r_cand[torch.arange(b), best]
        moved = float((best > 0).float().mean())
    loss = (r_mean - target).square().sum(dim=(-2, -1)) + (s_mean / PIXEL_SIZE).square().sum(-1)
    return loss.mean(), moved


def rws_loss(model, images, args, step: int) -> tuple[torch.Tensor, float]:
    """Wake-phase q update of reweighted wake-sleep (an amortised cross-entropy search): draw n_pose poses
    from q, weight them by softmax(log-lik / T) and raise q's log-density at them (mu and sigma)."""
    mu, sigma = pose_inputs(model, images, args.d_source)
    mu, sigma = mu[:, 0], sigma[:, 0]
    with torch.no_grad():
        z = mu[:, None] + sigma[:, None] * torch.randn(len(images), args.n_pose, 8)
        r, s = latent_to_pose(z, model.config.shift_scale)
        base = model.base_render_coords.expand(len(images), 1, -1, 3)
        ll = gaussian_log_likelihood(
            images[:, None], model.render_images(base, r, s, None), model.noise_sigma
        )
        w = torch.softmax(ll / args.rws_temperature, dim=1)
    log_q = torch.distributions.Normal(mu[:, None], sigma[:, None]).log_prob(z).sum(-1)
    return -(w * log_q).sum(1).mean(), float((w.max(dim=1).values).mean())


def combined_loss(model, images, args, step: int) -> tuple[torch.Tensor, float]:
    """The stage-1 IWAE bound over n_pose posterior samples plus a pull of the head's mean rotation towards
    the best of those samples and args.global_ prior draws, weighted by that hypothesis's log-likelihood gain
    over the mean (nats, detached)."""
    b = len(images)
    mu, sigma = pose_inputs(model, images, args.d_source)
    mu, sigma = mu[:, 0], sigma[:, 0]
    z = mu[:, None] + sigma[:, None] * torch.randn(b, args.n_pose, 8)
    r, s = latent_to_pose(torch.cat([mu[:, None], z], dim=1), model.config.shift_scale)
    base = model.base_render_coords.expand(b, 1, -1, 3)
    ll = gaussian_log_likelihood(images[:, None], model.render_images(base, r, s, None), model.noise_sigma)
    bound = torch.logsumexp(ll[:, 1:], dim=1) - math.log(args.n_pose)
    kl = 0.5 * (sigma.square() + mu.square() - 1 - sigma.square().log()).sum(-1)
    with torch.no_grad():
        r_global = random_rotations(b * args.global_).reshape(b, args.global_, 3, 3)
        s_global = s[:, :1].detach().expand(-1, args.global_, -1)
        ll_global = gaussian_log_likelihood(
            images[:, None], model.render_images(base, r_global, s_global, None), model.noise_sigma
        )
        r_all = torch.cat([r.detach(), r_global], dim=1)
        ll_all = torch.cat([ll.detach(), ll_global], dim=1)
        best = ll_all.argmax(dim=1)
        target = r_all[torch.arange(b), best]
        gain = ll_all.max(dim=1).values - ll[:, 0].detach()
    pull = gain * (r[:, 0] - target).square().sum(dim=(-2, -1))
    return (-bound + args.beta_pose * kl + args.pull * pull).mean(), float(
        (best > args.n_pose).float().mean()
    )


def through_model(args) -> None:
    """Stage 1 as the training loop runs it: ``AtomVAE.loss(stage=1)`` with Adam on the stage-1 parameters,
    the amplitude from variance matching, and the model's options (pose_sigma_init, hypothesis_pull,
    n_hypotheses)."""
    model, images, rotations = problem(
        args.images, args.residues, args.snr, args.seed, pose_sigma_init=args.pose_sigma_init
    )
    model.initialise_amplitude(images, None, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.trainable_parameters(1), lr=args.lr)
    weights = LossWeights(hypothesis_pull=args.pull)
    generator = torch.Generator().manual_seed(args.seed + 1)
    started = time.process_time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(images), (args.batch,), generator=generator)
        out = model.loss(
            images[idx],
            None,
            stage=1,
            n_conf=1,
            n_pose=args.n_pose,
            weights=weights,
            generator=generator,
            n_hypotheses=args.global_,
        )
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
        if step % args.report == 0:
            encoded = model.encode(images)
            err = rotation_angle_deg(encoded["rotation"], rotations)
            print(
                f"step {step:5d}  median error {float(err.median()):6.1f} deg  < 10 deg "
                f"{float((err < 10).float().mean()):.2f}  "
                f"sigma {float(encoded['pose_sigma'][:, 2:].median()):.3f}  amplitude "
                f"{float(model.amplitude):.3f}  "
                f"cpu {time.process_time() - started:.0f} s",
                flush=True,
            )


def train(args) -> None:
    model, images, rotations = problem(args.images, args.residues, args.snr, args.seed)
    if args.sigma_bias is not None:
        with torch.no_grad():
            model.pose_head.sigma.bias.fill_(args.sigma_bias)
    warm_start(model, images, rotations, args.warm_steps, args.d_source)
    parameters = [*model.encoder.parameters(), *model.pose_head.parameters()]
    if args.freeze_trunk:
        parameters = list(model.pose_head.parameters())
    optimizer = torch.optim.Adam(parameters, lr=args.hyp_lr if args.hyp_steps else args.lr)
    generator = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 2)
    started = time.process_time()

    def report(step):
        with torch.no_grad():
            mu, sigma = pose_inputs(model, images, "mean")
            r, _ = latent_to_pose(mu[:, 0], model.config.shift_scale)
            err = rotation_angle_deg(r, rotations)
        print(
            f"step {step:5d}  median error {float(err.median()):6.1f} deg  < 10 deg "
            f"{float((err < 10).float().mean()):.2f}  "
            f"sigma {float(sigma[..., 2:].median()):.3f}  |v1| "
            f"{float(mu[..., 2:5].norm(dim=-1).median()):.2f}  "
            f"cpu {time.process_time() - started:.0f} s",
            flush=True,
        )

    report(0)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(images), (args.batch,), generator=generator)
        if step <= args.hyp_steps and args.combined:
            loss, moved = combined_loss(model, images[idx], args, step)
        elif step <= args.hyp_steps and args.rws_temperature:
            loss, moved = rws_loss(model, images[idx], args, step)
        elif step <= args.hyp_steps:
            loss, moved = hypothesis_loss(model, images[idx], args, step)
        else:
            if step == args.hyp_steps + 1 and step > 1:
                optimizer = torch.optim.Adam(parameters, lr=args.lr)
            loss = stage1_loss(model, images[idx], args, step)
        optimizer.zero_grad()
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(parameters, args.clip)
        optimizer.step()
        if step % args.report == 0:
            report(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("measure", "train", "supervised", "model"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--residues", type=int, default=30)
    parser.add_argument("--snr", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-steps", type=int, default=0)
    parser.add_argument("--d-source", choices=("sample", "mean", "zero"), default="sample")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-pose", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta-pose", type=float, default=0.01)
    parser.add_argument("--fixed-sigma", type=float)
    parser.add_argument("--sigma-bias", type=float, help="initial bias of the pose sigma layer (softplus)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--anneal-steps", type=int, default=0)
    parser.add_argument("--per-image-scale", action="store_true")
    parser.add_argument("--freeze-trunk", action="store_true")
    parser.add_argument("--clip", type=float)
    parser.add_argument("--report", type=int, default=50)
    parser.add_argument(
        "--hyp-steps", type=int, default=0, help="steps of regression on scored hypotheses first"
    )
    parser.add_argument("--hyp-lr", type=float, default=1e-3)
    parser.add_argument("--local", type=int, default=16)
    parser.add_argument("--combined", action="store_true", help="IWAE + pull towards the best hypothesis")
    parser.add_argument("--pull", type=float, default=1.0)
    parser.add_argument("--pose-sigma-init", type=float)
    parser.add_argument(
        "--rws-temperature", type=float, help="warm-up by the RWS q update at this temperature"
    )
    parser.add_argument("--local-deg", type=float, default=15.0)
    parser.add_argument("--global", dest="global_", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"measure": measure, "train": train, "supervised": supervised, "model": through_model}[args.what](args)


if __name__ == "__main__":
    main()
