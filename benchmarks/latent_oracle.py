"""Where the ensemble's error comes from, with the truth's help (adenylate-kinase demo data; diagnostics that
use the simulator's truth, never part of the pipeline). Six commands:

- ``capacity PARTICLES_DIR``: can the paper's encoder (LayerNorm + MLP on raw pixels) learn the state at
  all? It is trained *supervised* on each particle's true DIMS frame (standardised; a linear read-out; the
  cpu preset's 12 epochs, batch 64, Adam 3e-4; 10% held out) and the held-out Pearson r is printed.
- ``oracle OUT [YAML]``: the demo, but every particle's conformation posterior is the truth: latent
  dimension 0 = (frame - 48.5) / 28, the others 0, sd 0.05. What decoder, image model and structure terms
  reach with perfect latents. YAML overrides the cpu preset (e.g. ``'{stage2: {learning_rate: 0.001}}'``).
- ``domains RUN_DIR``: C-alpha error per domain (CORE superposed) of the run's decoding at the oracle
  latent of DIMS frames 8, 48 and 88 (closed, intermediate and open modes).
- ``truth DIR [--oracle]`` (a demo folder or an ``adk.py --modes given`` output): log-likelihood per image,
  under the trained model's own image model (its width, per-image amplitude, the true poses and CTF), of
  each particle's truth (the base's rigid residues on the true residue frames) minus that of the model's
  decoding of the particle (its oracle latent, or its encoded mean from ``run/latents.npz``); 200 particles
  per state. Beside it the same for the truth with its own side chains (its atoms coarse-grained as the
  model coarse-grains the base): the image model's optimum is the truth when that is > 0, and the rigid
  base side chains are what keeps the model from it when the first figure is < 0. ``adk.py`` prints it
  beside the recovered fraction.
- ``clash RUN_DIR``: the heavy-atom clash penalty of DIMS frames' true backbones (closed to open) carrying
  the base's rigid side chains, on backbone and CB alone, with the frames' own side chains, and with the
  base's side chains repacked: what the clash term says about the truth when residues are rigid.
- ``rotamers [--run RUN_DIR]``: the DIMS frames' side-chain dihedrals against the base's, and the chi
  offsets a run with ``model.side_chains`` learnt.

Run: ``.venv/bin/python benchmarks/latent_oracle.py capacity out/demo/particles`` (see BENCHMARKS.md,
"Conformation search").
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from adk import machine_reference  # benchmarks/ is first on sys.path
from atomvae.demo import adk_inputs

ORACLE_SD = 0.05
N_FRAMES = 98


def oracle_latent(frames: np.ndarray, latent_dim: int) -> torch.Tensor:
    """(N,) DIMS frames -> (N, latent_dim) latents: the frame, standardised, in dimension 0."""
    z = torch.zeros(len(frames), latent_dim)
    z[:, 0] = torch.as_tensor((np.asarray(frames) - (N_FRAMES - 1) / 2) / 28.0, dtype=torch.float32)
    return z


def dims_frames():
    from atomvae.structure.io import read_ensemble

    inputs = adk_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_ensemble(inputs.trajectory, inputs.topology)


def capacity(particles: Path, epochs: int) -> None:
    import mrcfile

    from atomvae.model.config import ModelConfig
    from atomvae.model.encoder import ImageEncoder
    from atomvae.model.layers import linear

    torch.manual_seed(0)
    with mrcfile.mmap(particles / "particles.mrcs", mode="r") as stack:
        images = torch.as_tensor(np.array(stack.data), dtype=torch.float32)
    frames = np.load(particles / "truth.npz")["frame"][: len(images)]
    target = oracle_latent(frames, 1)[:, 0]
    images = images / images.std()
    order = torch.randperm(len(images))
    held_out, train = order[: len(images) // 10], order[len(images) // 10 :]
    encoder = ImageEncoder(ModelConfig())
    readout = linear(encoder.out_features, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *readout.parameters()], lr=3e-4)
    for epoch in range(epochs):
        for batch in train[torch.randperm(len(train))].split(64):
            loss = (readout(encoder(images[batch])).squeeze(-1) - target[batch]).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = readout(encoder(images[held_out])).squeeze(-1)
        r = np.corrcoef(predicted.numpy(), target[held_out].numpy())[0, 1]
        right_side = float(((predicted > 0) == (target[held_out] > 0)).float().mean())
        print(
            f"epoch {epoch}: train MSE {float(loss.detach()):.3f}, held-out r {r:.3f}, "
            f"right side {right_side:.3f}",
            flush=True,
        )


def oracle(out: Path, overrides: str | None, particles: Path | None) -> None:
    import yaml

    import atomvae.train.config as train_config
    from atomvae.data import dataset
    from atomvae.demo import DemoConfig, run_demo
    from atomvae.model import encoder

    if overrides:
        preset = train_config.apply_overrides(train_config.PRESETS["cpu"], yaml.safe_load(overrides))
        train_config.PRESETS["cpu"] = preset
    out.mkdir(parents=True, exist_ok=True)
    if particles is not None and not (out / "particles").exists():
        shutil.copytree(particles, out / "particles")
    # The demo simulates into OUT/particles (or reuses it); the truth is read after that, lazily.
    state: dict = {}

    def rows_read(self, indices):  # remember which particles the next posterior is for
        batch = read_rows(self, indices)
        state["rows"] = batch["index"]
        return batch

    def posterior(self, h):
        if "latents" not in state:
            state["latents"] = oracle_latent(
                np.load(out / "particles" / "truth.npz")["frame"], self.mu.out_features
            )
        rows = state["rows"]
        if len(rows) != h.shape[0]:
            raise RuntimeError("the oracle lost track of the batch's particles")
        mu = state["latents"][rows].to(h) + 0.0 * self.mu(self.norm(h))  # keeps the parameters in the graph
        return mu, torch.full_like(mu, ORACLE_SD)

    read_rows = dataset.ParticleDataset.__getitems__
    dataset.ParticleDataset.__getitems__ = rows_read
    encoder.ConformationPosterior.forward = posterior
    summary = run_demo(DemoConfig(out=out, progress=False))
    recovered, emd = summary["recovered_fraction"], summary["emd_rmsd"]
    print(f"oracle latents: recovered {recovered:.3f}, EMD-RMSD {emd:.3f} A")


def _superposed(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """a (N, 3) moved onto b by the rigid motion that superposes a[mask] on b[mask]."""
    from atomvae.geometry.superpose import kabsch

    rotation, translation = (t.numpy() for t in kabsch(torch.as_tensor(a[mask]), torch.as_tensor(b[mask])))
    return a @ rotation.T + translation


def domains(run_dir: Path) -> None:
    from atomvae.train.run import load_run

    model = load_run(run_dir).model
    topology, frames = dims_frames()
    ca = topology.select("CA")
    resid = topology.res_seq[topology.residue_index[ca]]
    groups = {
        "CORE": (resid <= 29) | ((resid >= 60) & (resid <= 121)) | (resid >= 160),
        "NMP 30-59": (resid >= 30) & (resid <= 59),
        "LID 122-159": (resid >= 122) & (resid <= 159),
    }
    header = " ".join(f"{name:>12}" for name in groups)
    print(f"frame {header}   (C-alpha rms error, A; CORE superposed)")
    for frame in (8, 48, 88):
        with torch.no_grad():
            decoded = (
                model.decoder(oracle_latent([frame], model.config.latent_conf), "CA")[0].double().numpy()
            )
        truth = frames[frame][ca]
        error = np.linalg.norm(_superposed(decoded, truth, groups["CORE"]) - truth, axis=1)
        print(f"{frame:5d} " + " ".join(f"{np.sqrt((error[m] ** 2).mean()):12.2f}" for m in groups.values()))


def truth_minus_decoded(
    run_dir: Path, particles_dir: Path, use_oracle: bool = False, per_state: int = 200
) -> dict[str, dict[str, float]]:
    """{state: {"base_side_chains": nats, "own_side_chains": nats}}: mean per image, over ``per_state``
    particles of each state (closed, intermediate, open DIMS frames), of the log-likelihood of the particle's
    truth minus that of the model's decoding of it (its encoded mean from RUN/latents.npz, or the oracle
    latent), under the run's own image model with the true poses and CTFs. ``particles_dir`` holds
    particles.star and the simulator's truth.npz; the run's pose centre must be the simulator's (as
    ``atomvae demo`` and ``benchmarks/adk.py`` train)."""
    from atomvae.model.losses import gaussian_log_likelihood
    from atomvae.physics.coarse_grain import coarse_grained_density
    from atomvae.structure.frames import backbone_frames
    from atomvae.train.particles import open_particles
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    model = run.model
    topology, frames = dims_frames()
    particle_frame = np.load(particles_dir / "truth.npz")["frame"]
    source = open_particles(particles_dir / "particles.star", run.config, need_poses=True)
    if not use_oracle:
        latents = np.load(run_dir / "latents.npz")
        encoded = dict(zip(latents["index"].tolist(), latents["mu"], strict=True))
    rng = np.random.default_rng(0)
    states = {"closed": particle_frame < 20, "intermediate": (particle_frame >= 30) & (particle_frame < 70)}
    states["open"] = particle_frame >= 80
    result = {}
    for name, in_state in states.items():
        candidates = np.flatnonzero(in_state)
        rows = np.sort(rng.choice(candidates, min(per_state, len(candidates)), replace=False))
        batch = source.load(rows.tolist(), torch.device("cpu"))
        with torch.no_grad():
            truth = (
                torch.as_tensor(frames[particle_frame[rows]], dtype=torch.float64)
                - model.base_center.double()
            )
            rotation, translation = backbone_frames(truth, topology)
            true_coords = model.decoder.atoms(rotation.float(), translation.float(), "render")
            # The truth with its own side chains, coarse-grained as the model coarse-grains the base (the
            # centroids are linear in the coordinates, so model-frame coordinates do as well as local ones).
            own = torch.stack(
                [torch.as_tensor(coarse_grained_density(x.numpy(), topology)[0]) for x in truth]
            ).float()
            if use_oracle:
                z = oracle_latent(particle_frame[rows], model.config.latent_conf)
            else:
                z = torch.as_tensor(np.stack([encoded[i] for i in rows.tolist()]), dtype=torch.float32)
            scores = []
            for coords in (true_coords, model.decoder(z, "render"), own):
                predicted = model.render_images(
                    coords, batch["rotation"].float(), batch["shift"].float(), batch["ctf"], batch["image"]
                )
                scores.append(gaussian_log_likelihood(batch["image"], predicted, model.noise_sigma))
        result[name] = {
            "base_side_chains": float((scores[0] - scores[1]).mean()),
            "own_side_chains": float((scores[2] - scores[1]).mean()),
        }
    return result


def truth_scores(folder: Path, use_oracle: bool) -> None:
    """Print ``truth_minus_decoded`` for a demo folder (run/, particles/) or a ``benchmarks/adk.py`` output
    folder (its first run_given_seed*/, sim/)."""
    if (folder / "run").is_dir():
        run_dir, particles_dir = folder / "run", folder / "particles"
    else:
        run_dir, particles_dir = sorted(folder.glob("run_given_seed*/"))[0], folder / "sim"
    print(f"run {run_dir}")
    for name, gap in truth_minus_decoded(run_dir, particles_dir, use_oracle).items():
        print(
            f"{name:<13} truth - decoded: {gap['base_side_chains']:+.2f} nats per image; "
            f"truth with its own side chains - decoded: {gap['own_side_chains']:+.2f}"
        )


def clash_of_truth(run_dir: Path) -> None:
    """Heavy-atom clash penalty (times the run's weight) of DIMS frames' true backbones carrying the base's
    rigid side chains, on backbone and CB only, with the frame's own side chains, and after repacking the
    base's side chains (AtomVAE.relax_side_chains, 200 steps)."""
    import dataclasses

    from atomvae.model.losses import heavy_atom_clash_penalty
    from atomvae.structure.frames import backbone_frames
    from atomvae.structure.torsions import SideChainTorsions
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    model, weights = run.model, run.config.loss
    topology, frames = dims_frames()
    if model.decoder.side_chains is None:
        model.decoder.set_side_chains(SideChainTorsions(topology, model.decoder.local_all.double()))
    model.config = dataclasses.replace(model.config, side_chain_relaxation_steps=200)
    slot = torch.as_tensor(np.flatnonzero(model.padded_atom_mask.flatten().numpy()))

    def penalty(padded: torch.Tensor, mask: torch.Tensor) -> float:
        value = heavy_atom_clash_penalty(
            padded, mask, model.clash_pairs, weights.heavy_clash_distance, reference=model.padded_base_coords
        )
        return weights.heavy_clash * float(value.sum())

    weight, distance = weights.heavy_clash, weights.heavy_clash_distance
    print(f"heavy-atom clash penalty x {weight:g} at {distance} A, per structure")
    print("frame  base side chains  backbone+CB  own side chains  base side chains repacked")
    for frame in (0, 8, 30, 48, 70, 88, 97):
        truth = torch.as_tensor(frames[frame], dtype=torch.float64) - model.base_center.double()
        rot, trans = (f.float()[None] for f in backbone_frames(truth, topology))
        rigid = model.decoder.atoms(rot, trans, "padded")
        own = rigid.clone()
        own[0, slot] = truth.float()
        repacked = model.decoder.atoms(rot, trans, "padded", model.relax_side_chains(rot, trans))
        print(
            f"{frame:5d} {penalty(rigid, model.padded_atom_mask):17.2f} "
            f"{penalty(rigid, model.padded_backbone_cb_mask):12.2f} "
            f"{penalty(own, model.padded_atom_mask):16.2f} "
            f"{penalty(repacked.detach(), model.padded_atom_mask):26.2f}"
        )


def rotamer_offsets(run_dir: Path | None) -> None:
    """How far the DIMS frames' side-chain dihedrals are from the base's (adk_open.pdb), and with a run
    whose model turns side chains (model.side_chains), the offsets it learnt at its particles' encoded
    means (run/latents.npz, the first 256)."""
    from atomvae.structure.io import read_structure
    from atomvae.structure.torsions import BACKBONE_NAMES, CHI_AXES, dihedral, remoteness

    topology, frames = dims_frames()
    base = read_structure(adk_inputs().base_pdb).coords
    quads, levels = [], []
    for r in range(topology.n_residues):
        start, stop = topology.residue_start[r], topology.residue_start[r + 1]
        index = {str(n): start + i for i, n in enumerate(topology.atom_name[start:stop])}
        axes = CHI_AXES.get(str(topology.res_name[r]), ())
        for k, (a2, a3) in enumerate(axes):
            rank = remoteness(a3, str(topology.element[index[a3]]))
            # The fourth atom: the first (by name) side-chain atom one step further out than a3.
            beyond = sorted(
                n
                for n in index
                if n not in BACKBONE_NAMES and remoteness(n, str(topology.element[index[n]])) == rank + 1
            )
            if beyond:
                a1 = "N" if k == 0 else axes[k - 1][0]
                quads.append([index[a1], index[a2], index[a3], index[beyond[0]]])
                levels.append(k)
    quad, level = torch.as_tensor(quads), np.asarray(levels)

    def chis(coords: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(coords, dtype=torch.float64)[quad]
        return dihedral(x[:, 0], x[:, 1], x[:, 2], x[:, 3]).numpy()

    def degrees(delta: np.ndarray) -> np.ndarray:
        return np.abs(np.rad2deg(np.angle(np.exp(1j * delta))))

    base_chi = chis(base)
    print(f"{len(quad)} chi angles of the base; |chi(frame) - chi(base)| in degrees:")
    for frame in (8, 48, 88):
        d = degrees(chis(frames[frame]) - base_chi)
        per_level = " / ".join(f"{d[level == k].mean():.1f}" for k in range(4))
        print(
            f"  frame {frame:2d}: mean {d.mean():.1f}, median {np.median(d):.1f}, "
            f"> 60: {(d > 60).mean():.0%}; chi1-4 means {per_level}"
        )
    d = degrees(chis(frames[8]) - chis(frames[88]))
    print(f"  frame 8 against 88: mean {d.mean():.1f}, > 60: {(d > 60).mean():.0%}")
    if run_dir is None:
        return
    from atomvae.train.run import load_run

    model = load_run(run_dir).model
    mu = torch.as_tensor(np.load(run_dir / "latents.npz")["mu"][:256])
    with torch.no_grad():
        chi = model.decoder.torsions(model.decoder.representation(mu))
    if chi is None:
        print(f"{run_dir}: rigid side chains")
        return
    assert model.decoder.side_chains is not None
    exists = model.decoder.side_chains.chi_mask
    offsets = np.rad2deg(chi.expand(len(mu), *exists.shape)[:, exists].numpy())  # (N, chis)
    mean_size = np.abs(offsets).mean(axis=0)
    print(
        f"{run_dir}: learnt |offset| per chi, mean over particles: median {np.median(mean_size):.1f}, "
        f"mean {mean_size.mean():.1f}, max {mean_size.max():.1f} degrees; sd across particles: median "
        f"{np.median(offsets.std(axis=0)):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("capacity")
    p.add_argument("particles", type=Path)
    p.add_argument("--epochs", type=int, default=12)
    p = commands.add_parser("oracle")
    p.add_argument("out", type=Path)
    p.add_argument("overrides", nargs="?")
    p.add_argument("--particles", type=Path, help="reuse these simulated demo particles (copied into OUT)")
    p = commands.add_parser("domains")
    p.add_argument("run_dir", type=Path)
    p = commands.add_parser("truth")
    p.add_argument("folder", type=Path, help="a demo folder or a benchmarks/adk.py output folder")
    p.add_argument("--oracle", action="store_true")
    p = commands.add_parser("clash")
    p.add_argument("run_dir", type=Path)
    p = commands.add_parser("rotamers")
    p.add_argument("--run", type=Path, help="also the side-chain offsets this run learnt")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    gflops = machine_reference()
    threads = torch.get_num_threads()
    print(f"machine reference: batched matmul float32 {gflops:.1f} GFLOP/s, {threads} threads")
    if args.command == "capacity":
        capacity(args.particles, args.epochs)
    elif args.command == "oracle":
        oracle(args.out, args.overrides, args.particles)
    elif args.command == "domains":
        domains(args.run_dir)
    elif args.command == "truth":
        truth_scores(args.folder, args.oracle)
    elif args.command == "clash":
        clash_of_truth(args.run_dir)
    else:
        rotamer_offsets(args.run)


if __name__ == "__main__":
    main()
