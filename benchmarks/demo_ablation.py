"""The demo with the cpu preset overridden field by field (the issue-10 ablations in BENCHMARKS.md).

    .venv/bin/python benchmarks/demo_ablation.py OUT '{loss: {orientation: 10.0}}' [--particles-from SIM]
        [--seed S] [--dims-base FRAME]

OUT is the demo folder; SIM (optional) is an existing simulated demo particle folder copied in as
OUT/particles, so several ablations share the same particles (they are identical anyway: same seed).
--seed: the demo's seed (training, ground-truth draw and samples; the particles come from SIM when given).
--dims-base FRAME: an oracle, not a user's route: the base is DIMS frame FRAME itself instead of the docked
crystal structure, so its side chains are the simulator's own (BENCHMARKS.md, "Side-chain torsions").
Prints the evaluation's recovered fraction (aggregate-posterior samples) and the prior samples' one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

import atomvae.train.config as train_config
from atomvae.demo import DemoConfig, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("overrides", help="YAML mapping applied over the cpu preset")
    parser.add_argument("--particles-from", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims-base", type=int, metavar="FRAME")
    args = parser.parse_args()
    if args.dims_base is not None:
        import atomvae.demo as demo
        from atomvae.structure.io import read_ensemble, write_ensemble

        def dims_frame_base(_base_pdb: Path, frames, _frame: int, out: Path) -> Path:
            inputs = demo.adk_inputs()
            topology, _ = read_ensemble(inputs.trajectory, inputs.topology)
            write_ensemble(out, topology, frames[args.dims_base][None])
            return out

        demo.docked_base = dims_frame_base  # run_demo looks it up at call time
    overrides = yaml.safe_load(args.overrides) or {}
    train_config.PRESETS["cpu"] = train_config.apply_overrides(train_config.PRESETS["cpu"], overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.particles_from is not None and not (args.out / "particles").exists():
        shutil.copytree(args.particles_from, args.out / "particles")
    summary = run_demo(DemoConfig(out=args.out, progress=False, seed=args.seed))
    print(
        f"{overrides}: recovered {summary['recovered_fraction']:.3f} (aggregate posterior), "
        f"{summary['prior_samples']['recovered_fraction']:.3f} (prior); minutes {summary['minutes']}"
    )


if __name__ == "__main__":
    main()
