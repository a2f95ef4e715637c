"""Prior against aggregate-posterior samples of a finished demo folder (issue 10 ablations).

Decodes 512 latents from the prior N(0, I), 512 from the particles' aggregate posterior (z ~ q(z | y_i),
i uniform; ``atomvae sample --latents``) and the 512 posterior means alone, and scores each by
EMD-RMSD on C-alpha against the demo's ground truth, with the base-only and floor references:

    .venv/bin/python benchmarks/sample_sources.py atomvae-demo [N [DRAWS]]   # N a side (512), DRAWS (1)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from atomvae.evaluate.emd_rmsd import compare_ensembles
from atomvae.structure.io import read_ensemble, read_structure
from atomvae.train.run import load_run


def main(folder: Path, n: int = 512, draws: int = 1) -> None:
    warnings.simplefilter("ignore")  # MDAnalysis chatter about DCD readers
    run = load_run(folder / "run")
    latents = np.load(folder / "run" / "latents.npz")
    gt_topology, gt = read_ensemble(folder / "gt_ensemble.dcd", folder / "gt_ensemble_topology.pdb")
    ca, gt_ca = run.topology.select("CA"), gt_topology.select("CA")
    base = read_structure(folder / "base_open_docked.pdb").coords[ca]

    def decode(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return run.model.to_base_frame(run.model.decode(z.float(), "all")).double().numpy()[:, ca]

    recovered: dict[str, list[float]] = {}
    for draw in range(draws):  # independent draws of samples and of the EMD's ground-truth subset
        generator = torch.Generator().manual_seed(draw)
        prior = torch.randn(n, latents["mu"].shape[1], generator=generator)
        chosen = torch.randint(len(latents["mu"]), (n,), generator=generator)
        mu, sigma = torch.as_tensor(latents["mu"])[chosen], torch.as_tensor(latents["sigma"])[chosen]
        posterior = mu + sigma * torch.randn(mu.shape, generator=generator)
        for name, z in (("prior", prior), ("aggregate posterior", posterior), ("posterior means", mu)):
            result = compare_ensembles(decode(z), gt[:, gt_ca], n, draw, base=base)
            recovered.setdefault(name, []).append(result.recovered_fraction)
            emd = result.model.emd_rmsd
            print(f"{name:<20} EMD-RMSD {emd:.3f} A  recovered {result.recovered_fraction:.3f}")
    if draws > 1:
        for name, values in recovered.items():
            print(f"{name:<20} recovered over {draws} draws: {np.mean(values):.3f} +- {np.std(values):.3f}")


if __name__ == "__main__":
    # sample_sources.py FOLDER [N [DRAWS]]
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:4]))
