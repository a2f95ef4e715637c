"""cryoSPHERE's training step beside ours on the CPU, same images, CTFs, poses and atom count (issue 12).

cryoSPHERE 0.6.1 (PyPI ``cryosphere``) trains through ``cryosphere_train``, which spawns one process per CUDA
device and initialises NCCL (``torch.cuda.set_device``), so on a CPU-only machine it trains nothing. Its
step is driven here directly from its own modules, exactly the body of its training loop
(``cryosphere_train.start_training``: translate and low-pass the images, encode, sample the segmentation,
decode, deform, rotate, ``renderer.project``, ``renderer.apply_ctf``, ``loss.compute_loss``, backward,
Adam), with its published defaults (the repository's parameters.yaml: latent 8, 20 segments over the whole
protein, encoder 512-256-64-64, decoder 512-512, full clashing loss, Adam 3e-5 / 3e-4 for the segmentation)
and without DDP, wandb or its data loader. Nothing of it is copied here: it is imported.

Same inputs for both: the adk base (adk_open.pdb), 64 x 64 images of 1.5 A pixels (random values: a step's
cost does not depend on them), the same defocus values and given rotations, batch 64 (cryoSPHERE's default
is 128: also timed). Same atom count: cryoSPHERE's Gaussians are our 487 residue pseudo-atoms (their
positions in the base, their masses as amplitudes), each one "residue" for its segmentation and structure
losses (continuity between consecutive ones, clashes below 4 A); its own PDB reader would give one
Gaussian per residue (214). cryoSPHERE renders one image per particle, ours 4 (cpu preset, given poses).

Timing: process CPU time on 1 thread, min over ``--rounds`` interleaved rounds (robust on a shared
machine), each step or render batch once per round.

Run with a Python that has cryoSPHERE and ours. How it was installed here (2026-12-01, again 2026-12-02):

    /work/main/.venv/bin/python -m venv --system-site-packages /tmp/cryosphere-venv
    /tmp/cryosphere-venv/bin/pip install --no-deps cryosphere
    # one of those requirements pulls torch; the constraint keeps it at the CPU wheel on disk (2026-12-02:
    # earlier a torch 2.14 CUDA build of 5 GB was pulled and uninstalled again)
    echo torch==2.13.0 > /tmp/torch-constraint.txt
    /tmp/cryosphere-venv/bin/pip install -c /tmp/torch-constraint.txt \
        -r ../shared/peers/cryosphere_requirements.txt
    echo /work/main/.venv/lib/python3.11/site-packages \
        > /tmp/cryosphere-venv/lib/python3.11/site-packages/zz.pth

(``--system-site-packages`` on a venv's Python reaches the base interpreter's packages, not the venv's,
hence the .pth file.) Then:

    OMP_NUM_THREADS=1 PYTHONPATH=src /tmp/cryosphere-venv/bin/python benchmarks/peer_cryosphere.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_step  # noqa: E402
from atomvae.train.config import PRESETS  # noqa: E402
from atomvae.train.loop import make_optimizer  # noqa: E402
from model_step import BOX, PIXEL_SIZE, matmul_gflops  # noqa: E402
from profile_step import build  # noqa: E402


def _without_torchvision() -> None:
    """cryoSPHERE's data set module imports torchvision only to resize images while loading them (not driven
    here). The torchvision wheels available here are not built against the CPU torch 2.13 (importing 0.28.0
    fails: "operator torchvision::nms does not exist"), so when it cannot be imported an empty stand-in
    is registered for that import; any use of it would fail loudly."""
    import types

    try:
        import torchvision.transforms.functional  # noqa: F401
    except (ImportError, RuntimeError):
        stand_in = types.ModuleType("torchvision")
        stand_in.transforms = types.ModuleType("torchvision.transforms")
        stand_in.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        sys.modules.update(
            {
                "torchvision": stand_in,
                "torchvision.transforms": stand_in.transforms,
                "torchvision.transforms.functional": stand_in.transforms.functional,
            }
        )


def cryosphere_step(base_coords: np.ndarray, masses: np.ndarray, batch: int, images, rotation, defocus):
    """cryoSPHERE's step and its renderer alone as two closures over one set of its modules."""
    _without_torchvision()
    from cryosphere.model import renderer
    from cryosphere.model.ctf import CTF
    from cryosphere.model.gmm import EMAN2Grid, Gaussian
    from cryosphere.model.loss import (
        calc_dist_by_pair_indices,
        compute_loss,
    )
    from cryosphere.model.mlp import MLP
    from cryosphere.model.segmentation import Segmentation
    from cryosphere.model.utils import (
        SpatialGridTranslate,
        compute_translations_per_residue,
        deform_structure,
        low_pass_images,
        low_pass_mask2d,
    )
    from cryosphere.model.vae import VAE

    n_atoms = len(base_coords)
    device = "cpu"
    settings = {
        "latent_dimension": 8,
        "segmentation_config": {"part1": {"all_protein": True, "N_segm": 20}},
        "encoder": {"hidden_dimensions": [512, 256, 64, 64]},
        "decoder": {"hidden_dimensions": [512, 512]},
        "epsilon_kl": "1e-10",  # a string, as PyYAML reads parameters.yaml's 1e-10 (compute_loss eval()s it)
        "N_epochs": 300,
        "loss": {
            "clashing_loss": {
                "full_clashing_loss": True,
                "clashing_cutoff": 4,
                "schedule": "constant",
                "beta": 0.1,
            },
            "continuity_loss": {"schedule": "constant", "beta": 0.1},
            "KL_prior_latent": {"schedule": "linear"},
            "KL_prior_segmentation_mean": {"schedule": "linear"},
            "KL_prior_segmentation_std": {"schedule": "linear"},
            "KL_prior_segmentation_proportions": {"schedule": "cyclical", "M": 5, "R": 0.5},
            "l2_pen": {"schedule": "constant", "beta": 0.000001},
        },
    }
    torch.manual_seed(123)
    latent = settings["latent_dimension"]
    n_segments = settings["segmentation_config"]["part1"]["N_segm"]
    encoder = MLP(
        BOX * BOX, latent * 2, settings["encoder"]["hidden_dimensions"], device, network_type="encoder"
    )
    decoder = MLP(
        latent, n_segments * 6, settings["decoder"]["hidden_dimensions"], device, network_type="decoder"
    )
    vae = VAE(encoder, decoder, device, settings["segmentation_config"], latent_dim=latent, amortized=True)
    grid = EMAN2Grid(BOX, PIXEL_SIZE, device=device)
    gmm = Gaussian(
        torch.tensor(base_coords, dtype=torch.float32),
        torch.ones(n_atoms, 1) * 1.5,  # our preset's starting width, A
        torch.tensor(masses, dtype=torch.float32)[:, None],
    )
    segmenter = Segmentation(
        settings["segmentation_config"],
        np.arange(n_atoms),
        np.zeros(n_atoms),
        tau_segmentation=0.05,
        device=device,
    )
    settings["segmentation_prior"] = segmenter.segmentation_prior
    segment_params = [p for name, p in segmenter.named_parameters() if "segments" in name]
    optimizer = torch.optim.Adam(
        [{"params": segment_params, "lr": 3e-4}, {"params": vae.encoder.parameters(), "lr": 3e-5}]
        + [{"params": vae.decoder.parameters(), "lr": 3e-5}]
    )
    n_images = len(images)
    ones = np.ones(n_images)
    ctf = CTF(
        [BOX] * n_images,
        [PIXEL_SIZE] * n_images,
        defocus,
        defocus + 300.0,
        30.0 * ones,
        300.0 * ones,
        2.7 * ones,
        0.1 * ones,
        device=device,
    )
    connect = np.stack([np.arange(n_atoms - 1), np.arange(1, n_atoms)], axis=1)
    structural = {
        "connect_pairs": torch.tensor(connect, dtype=torch.long),
        "clash_pairs": None,  # full clashing loss (its default)
        "connect_distances": torch.tensor(
            calc_dist_by_pair_indices(base_coords, connect), dtype=torch.float32
        ),
    }
    translator = SpatialGridTranslate(D=BOX, device=device)
    lp_mask = torch.from_numpy(low_pass_mask2d(BOX, PIXEL_SIZE, None)).float()
    tracking = {
        key: []
        for key in (
            "correlation_loss",
            "kl_prior_latent",
            "kl_prior_segmentation_mean",
            "kl_prior_segmentation_std",
            "kl_prior_segmentation_proportions",
            "l2_pen",
            "continuity_loss",
            "clashing_loss",
        )
    }
    indexes = torch.arange(batch)
    batch_images = images[:batch]
    poses = rotation[:batch]
    pose_translations = torch.zeros(batch, 2)

    def step() -> None:  # the body of cryosphere_train.start_training's loop, one batch
        flattened = batch_images.flatten(start_dim=-2)
        translated = translator.transform(batch_images, pose_translations[:, None, :])
        lp_translated = low_pass_images(translated, lp_mask)
        _, latent_mean, latent_std = sampled = vae.sample_latent(flattened)
        segmentation = segmenter.sample_segments(batch)
        quaternions, translations = vae.decode(sampled[0])
        per_residue = compute_translations_per_residue(translations, segmentation, n_atoms, batch, device)
        structures = deform_structure(gmm.mus, per_residue, quaternions, segmentation, device)
        posed = renderer.rotate_structure(structures, poses)
        predicted = renderer.project(posed, gmm.sigmas, gmm.amplitudes, grid)
        predicted = renderer.apply_ctf(predicted, ctf, indexes)
        for values in tracking.values():
            values.clear()
        loss = compute_loss(
            predicted,
            lp_translated,
            None,
            latent_mean,
            latent_std,
            vae,
            segmenter,
            settings,
            tracking,
            structural_loss_parameters=structural,
            epoch=0,
            predicted_structures=structures,
            device=device,
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    coords = gmm.mus.expand(batch, -1, -1).clone().requires_grad_(True)

    def render_alone() -> None:
        posed = renderer.rotate_structure(coords, poses)
        predicted = renderer.apply_ctf(
            renderer.project(posed, gmm.sigmas, gmm.amplitudes, grid), ctf, indexes
        )
        predicted.square().sum().backward()

    return step, render_alone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_step._clock = time.process_time  # the matmul reference in CPU time too, like everything here
    config = PRESETS["cpu"]
    batch = config.batch_size
    model, generator, images, ctf, rotation, shift = build(config, 128)
    optimizer = make_optimizer(model.trainable_parameters(2), 3e-4, torch.device("cpu"))
    n_conf = config.stage2.n_conf
    ours_images, ours_ctf, ours_rotation, ours_shift = (
        images[:batch],
        ctf[:batch],
        rotation[:batch],
        shift[:batch],
    )

    def our_step() -> None:
        out = model.loss(
            ours_images,
            ours_ctf,
            stage=2,
            n_conf=n_conf,
            n_pose=config.stage2.n_pose,
            weights=config.loss,
            pose_mode="given",
            given_rotation=ours_rotation,
            given_shift=ours_shift,
            generator=generator,
        )
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()

    coords = model.base_render_coords.expand(batch, n_conf, 1, -1, -1).clone().requires_grad_(True)
    render_rotation = ours_rotation[:, None, None].expand(batch, n_conf, 1, 3, 3)
    render_shift = ours_shift[:, None, None].expand(batch, n_conf, 1, 2)

    def our_renderer() -> None:
        model._unit_renders(coords, render_rotation, render_shift, ours_ctf).square().sum().backward()

    base = model.base_render_coords.numpy()
    masses = model.render_mass.numpy()
    defocus = ctf.defocus_u.numpy()
    peer_step, peer_render = cryosphere_step(base, masses, batch, images, rotation, defocus)
    peer_step_128, _ = cryosphere_step(base, masses, 128, images, rotation, defocus)
    cases = {
        "ours: step": (our_step, batch, batch * n_conf),
        "ours: renderer with CTF alone": (our_renderer, 0, batch * n_conf),
        "cryoSPHERE: step": (peer_step, batch, batch),
        "cryoSPHERE: step at its default batch 128": (peer_step_128, 128, 128),
        "cryoSPHERE: renderer with CTF alone": (peer_render, 0, batch),
    }
    for fn, _, _ in cases.values():
        fn()
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, (fn, _, _) in cases.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    n_atoms = len(base)
    print(
        f"1 thread, process CPU time (min of {args.rounds} rounds); {n_atoms} Gaussians, {BOX} px; machine "
        f"reference: batched matmul (256,64,{n_atoms})@(256,{n_atoms},64) "
        f"{matmul_gflops(n_atoms):.1f} GFLOP/s, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    rates = {}
    for name, (_, n_images, n_renders) in cases.items():
        seconds = best[name]
        rates[name] = (n_images / seconds, n_renders / seconds)
        images_part = f"{n_images / seconds:.0f} images/s, " if n_images else ""
        print(f"{name}: {images_part}{n_renders / seconds:.0f} renders/s ({1e3 * seconds:.0f} ms)")
    ours, peer = rates["ours: step"], rates["cryoSPHERE: step"]
    print(
        f"ours / cryoSPHERE at batch {batch}: {ours[0] / peer[0]:.2f}x images/s, "
        f"{ours[1] / peer[1]:.2f}x renders/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
