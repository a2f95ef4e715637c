"""atomvae analyze / export on a tiny trained run: every output read back with gemmi, mrcfile and starfile."""

from __future__ import annotations

import json

import gemmi
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from atomvae.cli.main import main
from atomvae.data.export import read_index_list, write_particle_subset
from atomvae.errors import InputError
from atomvae.evaluate.clustering import kmeans
from atomvae.physics.density import SIGMA_PER_RESOLUTION, atomic_numbers, gaussian_map, write_map
from atomvae.structure.io import read_structure
from atomvae.train.config import save_config
from helpers_train import BASE_PDB, tiny_config, write_particles

N_PARTICLES = 24


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run folder trained for a few steps through the command line, and its particles.

    So few steps leave the decoder at its initialisation, where the residual updates are zero and every
    latent decodes to the base; its zero-initialised weights are set to small random values so that
    structures differ between particles, as in a trained run."""
    from dataclasses import asdict

    from atomvae.train.checkpoint import load_checkpoint
    from atomvae.train.run import best_checkpoint_path

    folder = tmp_path_factory.mktemp("analyze")
    star = write_particles(folder / "data", n=N_PARTICLES)
    config_path = folder / "tiny.yaml"
    save_config(tiny_config(), config_path)
    run_dir = folder / "run"
    assert (
        main(
            [
                "train",
                str(star),
                str(BASE_PDB),
                "-o",
                str(run_dir),
                "--config",
                str(config_path),
                "--max-steps",
                "4",
                "--seed",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    _, checkpoint = best_checkpoint_path(run_dir)
    payload = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(0)
    for name, value in payload["model"].items():
        if name.startswith("decoder.") and value.is_floating_point() and not value.any():
            noise = torch.randn(value.shape, generator=generator)
            payload["model"][name] = 0.3 * noise / value.shape[-1] ** 0.5
    payload["position"] = asdict(payload["position"])
    torch.save(payload, checkpoint)
    return folder, star, run_dir


@pytest.fixture(scope="module")
def analysis(trained_run):
    folder, star, run_dir = trained_run
    out = folder / "analysis"
    assert (
        main(
            [
                "analyze",
                str(run_dir),
                "-o",
                str(out),
                "--states",
                "3",
                "--particles",
                str(star),
                "--traversal-steps",
                "5",
                "--rmsf-samples",
                "16",
            ]
        )
        == 0
    )
    return out


# ----------------------------------------------------------------------------------------- k-means


def test_kmeans_recovers_separated_clusters_numbered_by_size():
    rng = np.random.default_rng(1)
    true_centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 3.0]])
    sizes = [10, 40, 25]
    points = np.concatenate(
        [c + 0.3 * rng.standard_normal((n, 3)) for c, n in zip(true_centres, sizes, strict=True)]
    )
    result = kmeans(points, 3, seed=4)
    assert result.counts.tolist() == [40, 25, 10]  # cluster 0 is the largest
    assert np.allclose(result.centres, true_centres[[1, 2, 0]], atol=0.2)
    truth = np.repeat([2, 0, 1], sizes)
    assert np.array_equal(result.labels, truth)
    assert result.inertia == pytest.approx(((points - result.centres[result.labels]) ** 2).sum())
    again = kmeans(points, 3, seed=4)
    assert np.array_equal(again.labels, result.labels) and np.array_equal(again.centres, result.centres)
    with pytest.raises(InputError, match="K <="):
        kmeans(points[:2], 3)


# ------------------------------------------------------------------------------------------- maps


def test_gaussian_map_keeps_mass_and_centre_and_overlays_in_chimerax_convention(tmp_path):
    coords = np.array([[10.3, 12.1, 9.4], [14.0, 9.2, 11.7], [11.5, 11.0, 13.9]])
    weights = atomic_numbers(["C", "N", "S"])
    assert weights.tolist() == [6.0, 7.0, 16.0]
    origin, voxel, box = np.array([-2.0, 1.0, 0.5]), 0.8, 36
    density = gaussian_map(coords, weights, box, voxel, origin, resolution=4.0)
    assert density.shape == (box, box, box) and density.dtype == np.float32
    assert density.sum() == pytest.approx(weights.sum(), rel=1e-4)  # every atom well inside the box
    path = write_map(tmp_path / "m.mrc", density, voxel, origin)
    with mrcfile.open(path) as mrc:
        data = mrc.data.astype(np.float64)
        assert mrc.voxel_size.x == pytest.approx(voxel) and mrc.voxel_size.z == pytest.approx(voxel)
        header_origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=float)
        assert np.allclose(header_origin, origin)
        assert (int(mrc.header.nxstart), int(mrc.header.nystart), int(mrc.header.nzstart)) == (0, 0, 0)
        assert (int(mrc.header.mapc), int(mrc.header.mapr), int(mrc.header.maps)) == (1, 2, 3)
    # Voxel (i, j, k) = data[k, j, i] sits at origin + (i, j, k) * voxel: the map's centre of mass there is
    # the weighted centre of the atoms (ChimeraX places it so, from the header origin).
    z, y, x = np.meshgrid(*(np.arange(box),) * 3, indexing="ij")
    positions = np.stack([x, y, z], axis=-1) * voxel + header_origin
    centre = (positions * data[..., None]).sum(axis=(0, 1, 2)) / data.sum()
    assert np.allclose(centre, (coords * weights[:, None]).sum(0) / weights.sum(), atol=1e-3)
    # the width follows the resolution: sigma = 4 / (pi sqrt 2) A per axis for one atom
    single = gaussian_map(coords[:1], [1.0], box, voxel, origin, resolution=4.0).astype(np.float64)
    spread = ((positions[..., 0] - coords[0, 0]) ** 2 * single).sum() / single.sum()
    assert np.sqrt(spread) == pytest.approx(4.0 * SIGMA_PER_RESOLUTION, rel=0.03)


# ----------------------------------------------------------------------------------------- analyze


def test_analyze_writes_states_with_counts_and_rmsf(analysis):
    summary = json.loads((analysis / "states.json").read_text())
    counts = [s["count"] for s in summary["states"]]
    assert len(counts) == 3 and sum(counts) == N_PARTICLES and counts == sorted(counts, reverse=True)
    assert summary["n_particles"] == N_PARTICLES
    assert np.isclose(sum(s["fraction"] for s in summary["states"]), 1.0)
    with np.load(analysis / "states.npz") as states:
        assert np.array_equal(np.sort(states["index"]), np.arange(N_PARTICLES))
        assert np.bincount(states["state"], minlength=4)[1:].tolist() == counts

    base = read_structure(BASE_PDB)
    structure = gemmi.read_structure(str(analysis / "states.pdb"))
    assert len(structure) == 3
    rmsf = np.array(summary["rmsf"]["values"])
    assert rmsf.shape == (base.topology.n_residues,) and np.all(rmsf >= 0) and np.all(np.isfinite(rmsf))
    for model in structure:
        atoms = [(res.seqid.num, atom) for chain in model for res in chain for atom in res]
        assert len(atoms) == base.topology.n_atoms
        bfactors = np.array([atom.b_iso for _, atom in atoms])
        # every atom carries its residue's RMSF (PDB keeps 2 decimals)
        assert np.allclose(bfactors, rmsf[base.topology.residue_index], atol=0.006)
        xyz = np.array([atom.pos.tolist() for _, atom in atoms])
        assert np.abs(xyz.mean(0) - base.coords.mean(0)).max() < 5.0  # in the base's frame


def test_analyze_states_are_the_decoded_cluster_centres(trained_run, analysis):
    from atomvae.evaluate.analysis import decode_to_base_frame
    from atomvae.train.run import load_run

    _, _, run_dir = trained_run
    summary = json.loads((analysis / "states.json").read_text())
    centres = np.array([s["centre"] for s in summary["states"]])
    decoded = decode_to_base_frame(load_run(run_dir), centres)
    structure = gemmi.read_structure(str(analysis / "states.pdb"))
    for k, model in enumerate(structure):
        xyz = np.array([atom.pos.tolist() for chain in model for res in chain for atom in res])
        assert np.allclose(xyz, decoded[k], atol=1e-3)  # PDB: 3 decimals


def test_analyze_traversals_run_along_principal_axes(analysis):
    summary = json.loads((analysis / "states.json").read_text())
    assert [t["file"] for t in summary["traversals"]] == ["traversal_pc1.pdb", "traversal_pc2.pdb"]
    for traversal in summary["traversals"]:
        structure = gemmi.read_structure(str(analysis / traversal["file"]))
        assert len(structure) == 5
        first = np.array([a.pos.tolist() for ch in structure[0] for r in ch for a in r])
        last = np.array([a.pos.tolist() for ch in structure[4] for r in ch for a in r])
        assert np.all(np.isfinite(first)) and first.shape == last.shape
        start, end = np.array(traversal["start"]), np.array(traversal["end"])
        assert np.linalg.norm(end - start) > 0


def test_analyze_maps_overlay_their_states(trained_run, analysis):
    """Each state_<k>.mrc is on the particles' grid (32 px of 1.5 A) centred on the run's rotation centre,
    and its density's centre of mass is the atomic-number-weighted centre of that state's atoms."""
    summary = json.loads((analysis / "states.json").read_text())
    base = read_structure(BASE_PDB)
    weights = atomic_numbers(base.topology.element)
    structure = gemmi.read_structure(str(analysis / "states.pdb"))
    for k, model in enumerate(structure):
        xyz = np.array([atom.pos.tolist() for chain in model for res in chain for atom in res])
        with mrcfile.open(analysis / f"state_{k + 1}.mrc") as mrc:
            data = mrc.data.astype(np.float64)
            assert data.shape == (32, 32, 32) and float(mrc.voxel_size.x) == pytest.approx(1.5)
            origin = np.array([mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z], dtype=float)
        # the box centre (voxel 16) is the base's centre of atoms, the run's default rotation centre
        assert np.allclose(origin + 16 * 1.5, base.coords.mean(0), atol=1e-3)
        assert np.allclose(origin, summary["map"]["origin"], atol=1e-4)
        z, y, x = np.meshgrid(*(np.arange(32),) * 3, indexing="ij")
        positions = np.stack([x, y, z], axis=-1) * 1.5 + origin
        centre = (positions * data[..., None]).sum(axis=(0, 1, 2)) / data.sum()
        assert np.allclose(centre, (xyz * weights[:, None]).sum(0) / weights.sum(), atol=0.05)
        assert data.sum() == pytest.approx(weights.sum(), rel=0.01)  # the fragment lies inside the box


def test_analyze_movie_and_page(analysis):
    movie = (analysis / "movie.cxc").read_text()
    assert "open traversal_pc1.pdb coordsets true" in movie and "color bfactor" in movie
    assert "coordset #1 1,5 pauseFrames" in movie
    for line in movie.splitlines():
        if line.startswith("open "):
            assert (analysis / line.split()[1]).is_file()
    page = (analysis / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # latent states and RMSF, embedded
    assert "src='http" not in page and "href=" not in page  # nothing outside the file
    summary = json.loads((analysis / "states.json").read_text())
    for s in summary["states"]:
        assert f"<td class='v'>{s['count']}</td>" in page
    assert (analysis / "rmsf.png").stat().st_size > 1000


def test_analyze_clusters_the_latents_of_encode_or_of_the_runs_own_particles(trained_run, tmp_path):
    """With --latents the states are K-means of exactly those posterior means; without any latents
    option the run's own particle file is encoded."""
    _, star, run_dir = trained_run
    latents = tmp_path / "latents.npz"
    assert main(["encode", str(run_dir), str(star), "-o", str(latents)]) == 0
    out = tmp_path / "from_latents"
    assert (
        main(
            [
                "analyze",
                str(run_dir),
                "-o",
                str(out),
                "--states",
                "2",
                "--latents",
                str(latents),
                "--seed",
                "7",
                "--traversal-steps",
                "2",
                "--rmsf-samples",
                "4",
            ]
        )
        == 0
    )
    with np.load(latents) as data:
        mu, index = data["mu"], data["index"]
    expected = kmeans(mu, 2, seed=7)
    summary = json.loads((out / "states.json").read_text())
    assert np.allclose([s["centre"] for s in summary["states"]], expected.centres, atol=1e-6)
    assert [s["count"] for s in summary["states"]] == expected.counts.tolist()
    with np.load(out / "states.npz") as states:
        assert np.array_equal(states["index"], index)
        assert np.array_equal(states["state"], expected.labels + 1)
    assert summary["rmsf"]["n_structures"] == 4
    own = tmp_path / "own"
    assert (
        main(
            [
                "analyze",
                str(run_dir),
                "-o",
                str(own),
                "--states",
                "2",
                "--seed",
                "7",
                "--traversal-steps",
                "2",
                "--rmsf-samples",
                "4",
            ]
        )
        == 0
    )
    own_summary = json.loads((own / "states.json").read_text())
    assert own_summary["latents"] == "encoded" and own_summary["n_particles"] == N_PARTICLES
    assert own_summary["particles"] == str(star.resolve())
    assert np.allclose([s["centre"] for s in own_summary["states"]], expected.centres, atol=1e-5)


def test_analyze_refuses_a_non_empty_folder_and_bad_options(trained_run, analysis, capsys):
    _, star, run_dir = trained_run
    assert main(["analyze", str(run_dir), "-o", str(analysis)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            [
                "analyze",
                str(run_dir),
                "-o",
                str(analysis.parent / "x"),
                "--states",
                "99",
                "--particles",
                str(star),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("atomvae: error: --states:") and "\n" not in err.strip()


# ------------------------------------------------------------------------------------------ export


def test_export_state_keeps_relion_tables(trained_run, analysis, tmp_path):
    _, star, run_dir = trained_run
    out = tmp_path / "state2.star"
    assert (
        main(["export", str(run_dir), str(star), "-o", str(out), "--state", "2", "--analysis", str(analysis)])
        == 0
    )
    with np.load(analysis / "states.npz") as states:
        expected = np.sort(states["index"][states["state"] == 2])
    original, subset = starfile.read(star, always_dict=True), starfile.read(out, always_dict=True)
    pd.testing.assert_frame_equal(subset["optics"], original["optics"])
    pd.testing.assert_frame_equal(
        subset["particles"], original["particles"].iloc[expected].reset_index(drop=True)
    )
    # text-level copy: the header and every kept row are the original lines
    original_lines = star.read_text().splitlines()
    assert set(out.read_text().splitlines()) <= set(original_lines)
    assert (
        main(["export", str(run_dir), str(star), "-o", str(out), "--state", "2", "--analysis", str(analysis)])
        == 2
    )  # never overwrites without --overwrite


def test_export_by_distance_selects_posterior_mean_distances(trained_run, tmp_path):
    from atomvae.evaluate.analysis import decode_to_base_frame
    from atomvae.structure.select import parse_atom_selection
    from atomvae.train.inference import encode_particles
    from atomvae.train.run import load_run

    _, star, run_dir = trained_run
    run = load_run(run_dir)
    base = read_structure(BASE_PDB)
    chain, first, last = str(base.topology.chain_id[0]), base.topology.res_seq[0], base.topology.res_seq[-1]
    spec = f"{chain}:{first}:CA,{chain}:{last}:CA"
    a = parse_atom_selection(f"{chain}:{first}:CA", base.topology)
    b = parse_atom_selection(f"{chain}:{last}:CA", base.topology)
    encoded = encode_particles(run, star)
    coords = decode_to_base_frame(run, encoded["mu"])
    distances = np.linalg.norm(coords[:, a] - coords[:, b], axis=-1)
    threshold = float(np.median(distances))
    below, above = tmp_path / "below.star", tmp_path / "above.star"
    assert (
        main(
            [
                "export",
                str(run_dir),
                str(star),
                "-o",
                str(below),
                "--distance",
                spec,
                "--below",
                f"{threshold!r}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                str(run_dir),
                str(star),
                "-o",
                str(above),
                "--distance",
                spec,
                "--above",
                f"{threshold!r}",
            ]
        )
        == 0
    )
    original = starfile.read(star, always_dict=True)["particles"]
    names_below = starfile.read(below, always_dict=True)["particles"]["rlnImageName"].tolist()
    names_above = starfile.read(above, always_dict=True)["particles"]["rlnImageName"].tolist()
    assert names_below == original["rlnImageName"][encoded["index"][distances < threshold]].tolist()
    assert names_above == original["rlnImageName"][encoded["index"][distances > threshold]].tolist()


def _write_cs(path, n=7):
    dtype = [
        ("uid", "<u8"),
        ("blob/path", "S32"),
        ("blob/idx", "<u4"),
        ("blob/psize_A", "<f4"),
        ("ctf/df1_A", "<f4"),
        ("alignments3D/pose", "<f4", (3,)),
        ("alignments3D/shift", "<f4", (2,)),
    ]
    data = np.zeros(n, dtype=dtype)
    data["uid"] = np.arange(n) * 1000 + 17
    data["blob/path"] = [f">J1/imported/stack_{i % 2}.mrc".encode() for i in range(n)]
    data["blob/idx"] = np.arange(n)
    data["blob/psize_A"] = 1.1
    data["ctf/df1_A"] = np.linspace(9000, 15000, n)
    data["alignments3D/pose"] = np.arange(3 * n, dtype=np.float32).reshape(n, 3) / 10
    data["alignments3D/shift"] = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    with open(path, "wb") as f:
        np.save(f, data)
    return data


def test_export_index_list_keeps_cryosparc_fields(trained_run, tmp_path):
    _, _, run_dir = trained_run
    source = tmp_path / "particles.cs"
    data = _write_cs(source)
    rows = tmp_path / "rows.txt"
    rows.write_text("# picked in the latent space\n5\n1, 3\n3\n")
    out = tmp_path / "subset.cs"
    assert main(["export", str(run_dir), str(source), "-o", str(out), "--latent-file", str(rows)]) == 0
    subset = np.load(out)
    assert subset.dtype == data.dtype and np.array_equal(subset, data[[1, 3, 5]])
    np.save(tmp_path / "rows.npy", np.array([0, 6]))
    assert read_index_list(tmp_path / "rows.npy").tolist() == [0, 6]
    import pickle

    with open(tmp_path / "ind.pkl", "wb") as f:
        pickle.dump(np.array([2, 4]), f)
    assert read_index_list(tmp_path / "ind.pkl").tolist() == [2, 4]


def test_relion_30_single_table_subset(tmp_path):
    source = tmp_path / "old.star"
    source.write_text(
        "\n# version 30001\n\ndata_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n"
        "_rlnVoltage #3\n"
        + "".join(f"{i + 1:06d}@stack.mrcs {10000.5 + i:.6f} 300.0\n" for i in range(5))
        + "\n"
    )
    written, total = write_particle_subset(source, [4, 0], tmp_path / "new.star")
    assert (written, total) == (2, 5)
    table = starfile.read(tmp_path / "new.star")
    assert table["rlnImageName"].tolist() == ["000001@stack.mrcs", "000005@stack.mrcs"]
    assert (tmp_path / "new.star").read_text().startswith("\n# version 30001\n\ndata_\n")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--state", "1", "--latent-file", "{tmp}/rows.txt"], "exactly one selection"),
        ([], "exactly one selection"),
        (["--state", "1"], "needs --analysis"),
        (["--latent-file", "{tmp}/rows.txt", "--below", "3"], "only go with --distance"),
        (["--latent-file", "{tmp}/bad.txt"], "whole numbers"),
        (["--latent-file", "{tmp}/far.txt"], "out of range"),
        (["--distance", "A:1:CA,A:2:CA"], "--below and/or --above"),
    ],
)
def test_export_bad_input_is_one_line(trained_run, tmp_path, capsys, extra, message):
    _, star, run_dir = trained_run
    (tmp_path / "rows.txt").write_text("1\n")
    (tmp_path / "bad.txt").write_text("1.5\n")
    (tmp_path / "far.txt").write_text(f"{N_PARTICLES}\n")
    argv = ["export", str(run_dir), str(star), "-o", str(tmp_path / "out.star")]
    assert main(argv + [a.format(tmp=tmp_path) for a in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomvae: error: ") and message in err and "\n" not in err


def test_export_output_must_keep_the_format(trained_run, tmp_path, capsys):
    _, star, run_dir = trained_run
    (tmp_path / "rows.txt").write_text("1\n")
    assert (
        main(
            [
                "export",
                str(run_dir),
                str(star),
                "-o",
                str(tmp_path / "out.cs"),
                "--latent-file",
                str(tmp_path / "rows.txt"),
            ]
        )
        == 2
    )
    assert "must end in .star" in capsys.readouterr().err


def test_b_factors_are_written_per_atom(tmp_path):
    from atomvae.structure.io import write_ensemble

    base = read_structure(BASE_PDB)
    values = np.linspace(0.0, 9.5, base.topology.n_atoms)
    write_ensemble(tmp_path / "b.pdb", base.topology, base.coords, b_factors=values)
    st = gemmi.read_structure(str(tmp_path / "b.pdb"))
    read = np.array([a.b_iso for ch in st[0] for r in ch for a in r])
    assert np.allclose(read, values, atol=0.006)
    with pytest.raises(ValueError):
        write_ensemble(tmp_path / "c.pdb", base.topology, base.coords, b_factors=values[:3])
