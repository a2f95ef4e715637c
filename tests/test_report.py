"""`atomvae evaluate` end to end: JSON numbers against the library on the same draws, known mode
proportions, a self-contained HTML report, one-line errors, and the run part (latents, truth,
conditional accuracy, training curves) on a tiny trained run."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

from atomvae.cli.main import main
from atomvae.evaluate.conditional import (
    Latents,
    conditional_distance_correlation,
    posterior_distances,
    read_latents,
)
from atomvae.evaluate.emd_rmsd import compare_ensembles
from atomvae.evaluate.report import ReportFigure, ReportSection, summary_text, write_report
from atomvae.structure.io import read_ensemble, read_structure, write_ensemble
from atomvae.train.config import save_config
from helpers_train import BASE_PDB, tiny_config, write_particles

MODE_SHIFT = np.array([6.0, 0.0, 0.0])  # A; moves residues 8-10 in mode B


def _two_mode_ensemble(n_a: int, n_b: int, seed: int) -> tuple[object, np.ndarray]:
    """(topology, coords (n_a + n_b, 71, 3)) of the 10-residue AdK fragment: mode A is the PDB, mode B has
    residues 8-10 shifted by MODE_SHIFT; 0.01 A noise keeps every structure distinct."""
    s = read_structure(BASE_PDB)
    rng = np.random.default_rng(seed)
    coords = np.repeat(s.coords[None], n_a + n_b, axis=0)
    tail = s.topology.residue_index >= 7
    coords[n_a:, tail] += MODE_SHIFT
    return s.topology, coords + rng.normal(scale=0.01, size=coords.shape)


@pytest.fixture(scope="module")
def ensembles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    top, gt = _two_mode_ensemble(4, 4, seed=1)
    _, pred = _two_mode_ensemble(6, 2, seed=2)
    write_ensemble(folder / "gt.pdb", top, gt)
    write_ensemble(folder / "pred.pdb", top, pred)
    return folder


def _cutoff_between_modes() -> float:
    s = read_structure(BASE_PDB)
    ca = s.topology.atom_index("CA")
    a, b = s.coords[ca[0]], s.coords[ca[9]]
    return 0.5 * (np.linalg.norm(a - b) + np.linalg.norm(a - b - MODE_SHIFT))


def test_evaluate_json_matches_library_and_known_proportions(ensembles, capsys):
    folder = ensembles
    cut = _cutoff_between_modes()
    out = folder / "out"
    argv = [
        "evaluate",
        str(folder / "pred.pdb"),
        str(folder / "gt.pdb"),
        "--n",
        "8",
        "--seed",
        "5",
        "--base",
        str(BASE_PDB),
        "--distance",
        "A:1:CA,A:10:CA",
        "--cutoff",
        f"{cut}",
        "--distance",
        "A:1:CA,A:5:CA",
        "--cutoff",
        "1000",
        "--json",
        str(folder / "e.json"),
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "EMD-RMSD (CA, N = 8, 10 atoms)" in printed and "report:" in printed
    summary = json.loads((folder / "e.json").read_text())
    assert summary.pop("report") == str(out / "report.html")  # the --json copy also says where the report is
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["n"] == 8 and summary["atoms"] == "CA" and summary["n_atoms_compared"] == 10

    # The same numbers from the library on the same arrays and seed.
    top, pred = read_ensemble(folder / "pred.pdb")
    _, gt = read_ensemble(folder / "gt.pdb")
    ca = top.select("CA")
    base = read_structure(BASE_PDB).coords[ca]
    ref = compare_ensembles(pred[:, ca], gt[:, ca], 8, 5, base)
    assert summary["emd_rmsd"] == pytest.approx(ref.model.emd_rmsd, rel=1e-12)
    assert summary["base_only"] == pytest.approx(ref.base_only, rel=1e-12)
    assert "floor" not in summary and "recovered_fraction" not in summary  # GT has 8 < 2N structures
    assert any("2N" in note for note in summary["notes"])

    # With N = all structures the proportions are exact: GT 4 + 4, prediction 6 + 2.
    d1, d2 = summary["distances"]
    assert d1["gt_below"] == pytest.approx(0.5) and d1["pred_below"] == pytest.approx(0.75)
    assert d2["gt_below"] == 1.0 and d2["pred_below"] == 1.0
    # Both marginals are two spikes: W1 is the moved mass times the gap between the modes.
    gap = abs(np.linalg.norm(gt[0, ca[0]] - gt[0, ca[9]]) - np.linalg.norm(gt[7, ca[0]] - gt[7, ca[9]]))
    assert d1["wasserstein_1"] == pytest.approx(0.25 * gap, abs=0.05)
    props = summary["mode_proportions"]
    assert props["ground truth"] == pytest.approx(
        {
            f"d1 < {cut:g}, d2 < 1000": 0.5,
            f"d1 < {cut:g}, d2 >= 1000": 0.0,
            f"d1 >= {cut:g}, d2 < 1000": 0.5,
            f"d1 >= {cut:g}, d2 >= 1000": 0.0,
        }
    )
    assert props["prediction"][f"d1 >= {cut:g}, d2 < 1000"] == pytest.approx(0.25)

    # Mode B pulls residues 8-10 6 A away from residue 7: its 7-8 peptide bond is broken.
    assert summary["plausibility"]["ground truth"]["fraction_bonds_ok"] == pytest.approx(0.5)
    assert summary["plausibility"]["prediction"]["fraction_bonds_ok"] == pytest.approx(0.75)

    # The report: self-contained HTML with every PNG embedded, and the PNGs beside it.
    html = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["distance_histograms.png", "distance_scatter.png", "emd_rmsd.png", "rmsf.png"]
    assert html.count("src='data:image/png;base64,") == len(pngs)
    assert not re.search(r"(src|href)=['\"](?!data:)", html)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_floor_and_recovered_fraction(ensembles):
    folder = ensembles
    assert (
        main(
            [
                "evaluate",
                str(folder / "pred.pdb"),
                str(folder / "gt.pdb"),
                "--n",
                "4",
                "--base",
                str(BASE_PDB),
                "--json",
                str(folder / "f.json"),
                "-o",
                str(folder / "f"),
            ]
        )
        == 0
    )
    summary = json.loads((folder / "f.json").read_text())
    top, pred = read_ensemble(folder / "pred.pdb")
    _, gt = read_ensemble(folder / "gt.pdb")
    ca = top.select("CA")
    ref = compare_ensembles(pred[:, ca], gt[:, ca], 4, 0, read_structure(BASE_PDB).coords[ca])
    assert summary["floor"] == pytest.approx(ref.floor.emd_rmsd, rel=1e-12)
    expected = (ref.base_only - ref.model.emd_rmsd) / (ref.base_only - ref.floor.emd_rmsd)
    assert summary["recovered_fraction"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--n", "9"], "pred.pdb: the predicted ensemble holds 8 structures, fewer than the 9"),
        (["--distance", "A:1:CA,A:99:CA"], "pred.pdb: atom selection 'A:99:CA': no residue 99"),
        (["--distance", "A:1:CA,A:2:CA", "--cutoff", "3", "--cutoff", "4"], "2 --cutoff values for 1"),
        (["--distance", "A:1:CA"], "--distance 'A:1:CA': expected two atoms"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(ensembles, capsys, extra, message):
    folder = ensembles
    code = main(
        [
            "evaluate",
            str(folder / "pred.pdb"),
            str(folder / "gt.pdb"),
            "--n",
            "8",
            "-o",
            str(folder / "bad"),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("atomvae: error: ") and err.count("\n") == 1
    assert message in err


def test_write_report_and_summary_text(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    section = ReportSection(
        "Numbers & <things>",
        rows=[("a", "1 < 2")],
        paragraphs=["x"],
        figures=[ReportFigure("line", fig, "a line")],
    )
    written = write_report(
        tmp_path / "r",
        "title",
        [section],
        {"emd_rmsd": float("nan"), "n": 3},
        inputs=[("prediction", "p.pdb")],
        notes=["made by <demo>"],
    )
    html = written["html"].read_text()
    assert "<p>made by &lt;demo&gt;</p>" in html and "p.pdb" in html
    assert "Numbers &amp; &lt;things&gt;" in html and "1 &lt; 2" in html
    assert written["line"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(written["json"].read_text()) == {"emd_rmsd": None, "n": 3}  # NaN -> null
    distance = {
        "label": "d",
        "wasserstein_1": 0.5,
        "pred_mean": 1.0,
        "gt_mean": 1.5,
        "cutoff": 1.2,
        "pred_below": 0.25,
        "gt_below": 0.5,
    }
    text = summary_text(
        {
            "emd_rmsd": 1.23456,
            "n": 4,
            "atoms": "CA",
            "n_atoms_compared": 10,
            "base_only": 2.0,
            "distances": [distance],
        }
    )
    assert "1.235 A" in text and "base only 2.000" in text and "pred 25.0% / GT 50.0%" in text


@pytest.fixture(scope="module")
def run_with_latents(tmp_path_factory):
    """A tiny run trained for 8 steps (into stage 2, so decoded structures vary with z), its latents, and a
    truth file mapping particles to GT structures."""
    folder = tmp_path_factory.mktemp("evalrun")
    star = write_particles(folder / "data", n=16)
    save_config(tiny_config(), folder / "tiny.yaml")
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
                str(folder / "tiny.yaml"),
                "--max-steps",
                "8",
                "--seed",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["encode", str(run_dir), str(star), "-o", str(folder / "latents.npz")]) == 0
    top, gt = _two_mode_ensemble(4, 4, seed=1)
    write_ensemble(folder / "gt.pdb", top, gt)
    np.savez(folder / "truth.npz", frame=np.random.default_rng(0).integers(0, 8, size=16))
    return folder, run_dir, star


def test_evaluate_with_run_latents_truth_and_conditional(run_with_latents, capsys):
    folder, run_dir, star = run_with_latents
    out = folder / "report"
    argv = [
        "evaluate",
        str(folder / "gt.pdb"),
        str(folder / "gt.pdb"),
        "--n",
        "4",
        "--run",
        str(run_dir),
        "--latents",
        str(folder / "latents.npz"),
        "--particles",
        str(star),
        "--truth",
        str(folder / "truth.npz"),
        "--ensemble-source",
        str(folder / "gt.pdb"),
        "--distance",
        "A:1:CA,A:10:CA",
        "--posterior-samples",
        "3",
        "--seed",
        "7",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert "conditional A:1:CA-A:10:CA: Pearson r" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    pngs = {p.name for p in out.glob("*.png")}
    assert {"latent_pca.png", "conditional_d1.png", "training_curves.png"} <= pngs
    explained = summary["latent_pca_explained_variance"]
    assert len(explained) == 2 and 0 <= explained[1] <= explained[0] <= 1

    # The correlation is the library's on the same posterior samples (same seed) and truth.
    from atomvae.train.run import load_run

    run = load_run(run_dir)
    latents = read_latents(folder / "latents.npz")
    top, gt = read_ensemble(folder / "gt.pdb")
    ca = top.atom_index("CA")
    frames = np.load(folder / "truth.npz")["frame"][latents.index]
    truth = np.linalg.norm(gt[frames, ca[0]] - gt[frames, ca[9]], axis=-1)
    run_ca = run.topology.atom_index("CA")
    samples = posterior_distances(
        lambda z: run.model.decode(z, "all"), latents, np.array([[run_ca[0], run_ca[9]]]), 3, 7
    )
    expected = conditional_distance_correlation(samples[:, :, 0], truth)
    assert np.isfinite(expected)
    assert summary["conditional"]["pearson_r"]["A:1:CA-A:10:CA"] == pytest.approx(expected, rel=1e-9)
    assert summary["conditional"]["n_particles"] == 16

    # A subset of particles: the seeded draw of 5, sorted.
    assert main([*argv[:-2], "-o", str(folder / "subset"), "--conditional-particles", "5"]) == 0
    subset = json.loads((folder / "subset" / "summary.json").read_text())["conditional"]
    keep = np.sort(np.random.default_rng(7).choice(16, size=5, replace=False))
    part = Latents(mu=latents.mu[keep], sigma=latents.sigma[keep], index=latents.index[keep])
    samples = posterior_distances(
        lambda z: run.model.decode(z, "all"), part, np.array([[run_ca[0], run_ca[9]]]), 3, 7
    )
    expected = conditional_distance_correlation(samples[:, :, 0], truth[keep])
    assert subset["n_particles"] == 5
    assert subset["pearson_r"]["A:1:CA-A:10:CA"] == pytest.approx(expected, rel=1e-9, nan_ok=True)


def test_run_options_need_a_run_and_truth_must_fit(run_with_latents, capsys):
    folder, run_dir, _ = run_with_latents
    base = ["evaluate", str(folder / "gt.pdb"), str(folder / "gt.pdb"), "--n", "4", "-o", str(folder / "x")]
    assert main([*base, "--truth", str(folder / "truth.npz")]) == 2
    assert "need --run" in capsys.readouterr().err
    np.savez(folder / "short_truth.npz", frame=np.zeros(3, dtype=int))
    assert (
        main(
            [
                *base,
                "--run",
                str(run_dir),
                "--latents",
                str(folder / "latents.npz"),
                "--truth",
                str(folder / "short_truth.npz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "short_truth.npz: holds 3 particles but the latents refer to particle 15" in err


def test_training_curves_plot_every_numeric_key():
    from atomvae.evaluate.plots import training_curves_figure

    rng = np.random.default_rng(0)
    records = [
        {
            "kind": "train",
            "step": s,
            "stage": 1 if s < 300 else 2,
            "epoch": s // 100,
            "finite": True,
            "loss": float(100 * np.exp(-s / 200) + rng.normal()),
            "kl_conf": 0.1 * s,
            "note": "text",
        }
        for s in range(1, 501)
    ]
    records += [
        {"kind": "val", "step": s, "stage": 2, "val_log_likelihood": -float(s)} for s in (300, 400, 500)
    ]
    fig = training_curves_figure(records)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "kl_conf", "val_log_likelihood"]
    loss_ax = fig.axes[0]
    # Two stages, each a faint raw line and its running mean; the raw stage-1 line holds steps 1..299.
    assert len(loss_ax.lines) == 4
    assert loss_ax.lines[0].get_xdata().tolist() == list(range(1, 300))
    assert training_curves_figure([{"step": 1, "stage": 1, "note": "x"}]) is None
    fig.savefig(io.BytesIO(), format="png")  # renders without error


def test_run_without_latents_or_truth_says_what_is_missing(run_with_latents, capsys):
    folder, run_dir, _ = run_with_latents
    base = ["evaluate", str(folder / "gt.pdb"), str(folder / "gt.pdb"), "--n", "4", "--run", str(run_dir)]
    assert main([*base, "-o", str(folder / "no_latents")]) == 0
    summary = json.loads((folder / "no_latents" / "summary.json").read_text())
    assert any(n.startswith("No latent space") for n in summary["run_notes"])
    assert "latent_pca_explained_variance" not in summary
    assert (folder / "no_latents" / "training_curves.png").is_file()
    assert main([*base, "--latents", str(folder / "latents.npz"), "-o", str(folder / "no_truth")]) == 0
    summary = json.loads((folder / "no_truth" / "summary.json").read_text())
    assert summary["run_notes"][0].startswith("No conditional accuracy: it needs --truth")
    assert "Not shown" in (folder / "no_truth" / "report.html").read_text()
    capsys.readouterr()


def test_library_call_with_notes_and_without_report(ensembles, tmp_path):
    from atomvae.evaluate.evaluation import EvaluateConfig, evaluate

    folder = ensembles
    config = EvaluateConfig(
        pred=folder / "pred.pdb",
        gt=folder / "gt.pdb",
        n=3,
        seed=2,
        out_dir=tmp_path / "none",
        write_report=False,
        notes=("made by a test",),
    )
    summary = evaluate(config)
    assert summary["about"] == ["made by a test"] and "report" not in summary
    assert not (tmp_path / "none").exists()
    assert summary["emd_rmsd"] > 0 and summary["n"] == 3
