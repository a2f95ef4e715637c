"""AtomVAE: shapes and dtypes through the forward pass, the exact base at init, conventions, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from MDAnalysisTests.datafiles import PDB_xsmall  # adk_open_10res.pdb

from atomvae.geometry.rotations import random_rotations
from atomvae.model.config import LossWeights, ModelConfig
from atomvae.model.losses import backbone_continuity, gaussian_log_likelihood, peptide_geometry
from atomvae.model.pose import latent_to_pose, latent_to_pose_correction
from atomvae.model.vae import AtomVAE
from atomvae.physics.ctf import CTFParams
from atomvae.physics.render import render, render_projections
from atomvae.structure.domains import dynamic_domains
from atomvae.structure.io import read_structure

BOX = 24
PIXEL_SIZE = 2.0


@pytest.fixture(scope="module")
def base():
    structure = read_structure(PDB_xsmall)
    return structure.topology, structure.coords


def small_config(**changes) -> ModelConfig:
    fields = dict(
        image_size=BOX,
        encoder_widths=(64, 32),
        decoder_width=32,
        decoder_blocks=2,
        decoded_dim=32,
        pose_width=16,
        render_atoms="backbone",
    )
    fields.update(changes)
    return ModelConfig(**fields)


def make_model(base, seed: int = 0, **changes) -> AtomVAE:
    torch.manual_seed(seed)
    topology, coords = base
    return AtomVAE(small_config(**changes), topology, coords, box=BOX, pixel_size=PIXEL_SIZE, noise_sigma=0.5)


def batch_ctf(n: int) -> CTFParams:
    return CTFParams(
        defocus_u=torch.full((n,), 9000.0),
        defocus_v=torch.full((n,), 9500.0),
        astigmatism_angle=torch.full((n,), 20.0),
    )


def perturb_decoder(model: AtomVAE, seed: int, scale: float = 0.3) -> None:
    """Give the zero-initialised layers random values so the decoder moves residues."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [model.decoder.to_frames, *(block.update for block in model.decoder.blocks)]:
            layer.weight.copy_(scale * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.copy_(scale * torch.randn(layer.bias.shape, generator=generator))


def test_paper_defaults():
    config = ModelConfig()
    assert (config.image_size, config.latent_conf, config.latent_pose) == (64, 32, 8)
    assert config.encoder_widths == (2048, 1024, 512, 512)
    assert (config.decoder_width, config.decoder_blocks, config.decoded_dim) == (256, 5, 512)
    assert (config.pose_width, config.pose_layers) == (32, 3)
    weights = LossWeights()
    paper_weights = (1.0, 0.01, 0.01, 0.1)
    assert (weights.beta_conf, weights.beta_pose, weights.backbone, weights.centering) == paper_weights
    with pytest.raises(ValueError):
        ModelConfig(render_atoms="sidechain")


def test_paper_layer_shapes_and_initialisation(base):
    topology, coords = base
    torch.manual_seed(0)
    model = AtomVAE(ModelConfig(), topology, coords, box=64, pixel_size=2.0, noise_sigma=1.0)
    widths = [layer.out_features for layer in model.encoder.mlp.layers]
    assert widths == [2048, 1024, 512, 512]
    assert model.encoder.input_norm.normalized_shape == (4096,)
    assert model.decoder.to_frames.out_features == 9 * topology.n_residues
    assert len(model.decoder.blocks) == 5
    # Truncated normal with std 1/sqrt(fan_in) cut at 2 std: bounded, and the std of such a
    # truncated normal is 0.8796 of the untruncated one.
    layer = model.encoder.mlp.layers[0]
    std = 1.0 / math.sqrt(layer.in_features)
    assert layer.weight.abs().max() <= 2 * std + 1e-7
    assert layer.weight.std().item() == pytest.approx(0.8796 * std, rel=0.01)
    assert layer.bias.abs().max() == 0
    # residual updates and the delta output start at zero
    for block in model.decoder.blocks:
        assert block.update.weight.abs().max() == 0 and block.update.bias.abs().max() == 0
        assert block.hidden.weight.abs().max() > 0
    assert model.decoder.to_frames.weight.abs().max() == 0


def test_decoder_returns_base_exactly_at_init(base):
    model = make_model(base)
    generator = torch.Generator().manual_seed(1)
    z = 3.0 * torch.randn(5, model.config.latent_conf, generator=generator)
    decoded = model.decode(z)
    assert decoded.shape == (5, base[0].n_atoms, 3) and decoded.dtype == torch.float32
    expected = torch.as_tensor(base[1], dtype=torch.float32) - torch.as_tensor(base[1]).mean(0).float()
    torch.testing.assert_close(decoded, expected.expand_as(decoded), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        model.to_base_frame(decoded[0]), torch.as_tensor(base[1], dtype=torch.float32), atol=1e-4, rtol=0
    )
    samples = model.sample(4, generator=generator)
    torch.testing.assert_close(samples, expected.expand(4, -1, -1), atol=1e-5, rtol=0)
    render_atoms = model.decode(z, atoms="render")
    assert render_atoms.shape == (5, len(base[0].select("backbone")), 3)


def test_delta_frames_act_in_the_residue_frame(base):
    """A delta translation t (local) moves residue r's atoms by R_base[r] @ t; a delta rotation turns
    the residue about its own CA (new = base o delta)."""
    model = make_model(base)
    n_res = model.decoder.n_residues
    t_local = torch.tensor([0.4, -0.2, 0.7])
    with torch.no_grad():
        bias = torch.zeros(n_res, 9)
        bias[:, 0:3] = t_local
        bias[:, 3:6] = torch.tensor([math.cos(0.3), math.sin(0.3), 0.0]) - torch.tensor([1.0, 0.0, 0.0])
        bias[:, 6:9] = torch.tensor([-math.sin(0.3), math.cos(0.3), 0.0]) - torch.tensor([0.0, 1.0, 0.0])
        model.decoder.to_frames.bias.copy_(bias.flatten())
    decoded = model.decode(torch.zeros(1, model.config.latent_conf))[0].double()
    base_model_frame = model.base_coords.double()
    rot_z = torch.tensor(
        [[math.cos(0.3), -math.sin(0.3), 0.0], [math.sin(0.3), math.cos(0.3), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    base_rot = model.decoder.base_rot.double()
    base_trans = model.decoder.base_trans.double()
    residue = torch.as_tensor(base[0].residue_index)
    local = ((base_model_frame - base_trans[residue]).unsqueeze(-2) @ base_rot[residue]).squeeze(-2)
    expected = (
        (base_rot[residue] @ (rot_z @ local.unsqueeze(-1))).squeeze(-1)
        + base_trans[residue]
        + (base_rot[residue] @ t_local.double()).reshape(-1, 3)
    )
    torch.testing.assert_close(decoded, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("pose_mode", ["inferred", "given", "refine"])
def test_loss_shapes_dtypes_and_finite(base, stage, pose_mode):
    model = make_model(base)
    batch = 3
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(batch, BOX, BOX, generator=generator)
    rotation = random_rotations(batch, generator=generator)
    shift = torch.randn(batch, 2, generator=generator)
    out = model.loss(
        images,
        batch_ctf(batch),
        stage=stage,
        n_conf=3,
        n_pose=2,
        weights=LossWeights(),
        given_rotation=rotation,
        given_shift=shift,
        pose_mode=pose_mode,
        generator=generator,
    )
    assert out.total.shape == () and out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert out.per_image_log_likelihood.shape == (batch,) and not out.per_image_log_likelihood.requires_grad
    assert set(out.terms) >= {"nll", "kl_conf", "kl_pose", "backbone", "centering", "total"}
    assert all(math.isfinite(v) for v in out.terms.values())
    out.total.backward()
    assert model.log_amplitude.grad is not None
    assert (model.pose_head.mu.weight.grad is not None) == (pose_mode != "given")
    decoder_grad = model.decoder.to_frames.weight.grad
    assert (decoder_grad is not None and decoder_grad.abs().max() > 0) == (stage == 2)
    if stage == 1:
        assert out.terms["kl_conf"] == 0 and out.terms["backbone"] == 0
        assert model.conf_posterior.mu.weight.grad is None


def test_encode_shapes(base):
    model = make_model(base)
    images = torch.randn(4, BOX, BOX)
    encoded = model.encode(images)
    assert encoded["mu_conf"].shape == (4, 32) and encoded["sigma_conf"].shape == (4, 32)
    assert (encoded["sigma_conf"] > 0).all()
    assert encoded["rotation"].shape == (4, 3, 3) and encoded["shift"].shape == (4, 2)
    eye = torch.eye(3).expand(4, 3, 3)
    torch.testing.assert_close(
        encoded["rotation"] @ encoded["rotation"].transpose(-1, -2), eye, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("pose_mode", ["inferred", "refine"])
def test_stage2_starts_where_stage1_ended(base, pose_mode):
    """At the same parameters and sampling noise the first stage-2 evaluation gives the pose head the same
    input as stage 1 did, so it samples the same poses: with the decoder still at the base (its state
    when stage 2 starts) the per-image likelihood and the pose KL agree between the stages. Stage 1 once
    fed d(0) = 0 while stage 2 feeds d(z) with rms ~1, a jump in the pose head's input."""
    model = make_model(base, render_atoms="CA").double()
    with torch.no_grad():  # a pose head that reads d, as after training
        for parameter in model.pose_head.parameters():
            parameter.add_(
                0.3
                * torch.randn(
                    parameter.shape, generator=torch.Generator().manual_seed(3), dtype=parameter.dtype
                )
            )
    rotation = random_rotations(4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shift = torch.zeros(4, 2, dtype=torch.float64)
    images = render_projections(model.base_render_coords, rotation, shift, BOX, PIXEL_SIZE)
    d = model.decoder.representation(torch.randn(4, model.config.latent_conf, dtype=torch.float64))
    assert d.square().mean().sqrt().item() > 0.5  # what stage 2 feeds the pose head is far from zero
    outputs = [
        model.loss(
            images,
            None,
            stage=stage,
            n_conf=1,
            n_pose=3,
            weights=LossWeights(),
            given_rotation=rotation,
            given_shift=shift,
            pose_mode=pose_mode,
            generator=torch.Generator().manual_seed(5),
        )
        for stage in (1, 2)
    ]
    torch.testing.assert_close(
        outputs[0].per_image_log_likelihood, outputs[1].per_image_log_likelihood, atol=1e-6, rtol=1e-9
    )
    assert outputs[0].terms["kl_pose"] == pytest.approx(outputs[1].terms["kl_pose"], rel=1e-9)


def test_encode_returns_the_poses_the_model_uses(base):
    """given: the given poses; refine: the given poses corrected by the pose head's mean; inferred: the
    pose head's mean at d(mu_conf), the centre of the conformation samples it is trained with."""
    model = make_model(base)
    generator = torch.Generator().manual_seed(12)
    images = torch.randn(3, BOX, BOX, generator=generator)
    rotation = random_rotations(3, generator=generator)
    shift = torch.randn(3, 2, generator=generator)
    given = model.encode(images, "given", given_rotation=rotation, given_shift=shift)
    torch.testing.assert_close(given["rotation"], rotation)
    torch.testing.assert_close(given["shift"], shift)
    h = model.encoder(images)
    mu_p, _ = model.pose_head(h, model.decoder.representation(model.conf_posterior(h)[0]))
    inferred = model.encode(images, "inferred")
    torch.testing.assert_close(inferred["pose_mu"], mu_p)
    torch.testing.assert_close(inferred["rotation"], latent_to_pose(mu_p, model.config.shift_scale)[0])
    refined = model.encode(images, "refine", given_rotation=rotation, given_shift=shift)
    expected_rotation, expected_shift = latent_to_pose_correction(
        mu_p, rotation, shift, model.config.refine_rotation_scale, model.config.refine_shift_scale
    )
    torch.testing.assert_close(refined["rotation"], expected_rotation)
    torch.testing.assert_close(refined["shift"], expected_shift)
    assert not torch.allclose(refined["rotation"], rotation)  # the correction is applied
    with pytest.raises(ValueError, match="needs given_rotation"):
        model.encode(images, "refine")


def test_trainable_parameters_per_stage(base):
    model = make_model(base)
    stage1 = {id(p) for p in model.trainable_parameters(1)}
    assert id(model.log_amplitude) in stage1
    assert all(id(p) in stage1 for p in model.pose_head.parameters())
    assert all(id(p) in stage1 for p in model.encoder.parameters())
    assert not any(id(p) in stage1 for p in model.decoder.parameters())
    assert not any(id(p) in stage1 for p in model.conf_posterior.parameters())
    assert {id(p) for p in model.trainable_parameters(2)} == {id(p) for p in model.parameters()}
    with pytest.raises(ValueError):
        model.trainable_parameters(3)


def test_per_image_log_likelihood_equals_direct_computation(base):
    """Rebuild the IWAE-style term by hand from the same random draws: decode each conformation
    sample, render it at the given pose with the CTF, and take log(mean(exp(log N))) in float64."""
    model = make_model(base).double()
    perturb_decoder(model, seed=3, scale=0.05)
    batch, n_conf = 2, 4
    generator = torch.Generator().manual_seed(4)
    rotation = random_rotations(batch, generator=generator, dtype=torch.float64)
    shift = torch.randn(batch, 2, generator=generator, dtype=torch.float64)
    ctf = batch_ctf(batch).to(dtype=torch.float64)
    with torch.no_grad():
        images = render(model.base_render_coords, rotation, shift, ctf, BOX, PIXEL_SIZE) + 0.3 * torch.randn(
            batch, BOX, BOX, generator=generator, dtype=torch.float64
        )
        out = model.loss(
            images,
            ctf,
            stage=2,
            n_conf=n_conf,
            n_pose=1,
            weights=LossWeights(),
            given_rotation=rotation,
            given_shift=shift,
            pose_mode="given",
            generator=torch.Generator().manual_seed(7),
        )
        replay = torch.Generator().manual_seed(7)
        mu, sigma = model.conf_posterior(model.encoder(images))
        z = mu[:, None] + sigma[:, None] * torch.randn(
            batch, n_conf, mu.shape[-1], generator=replay, dtype=torch.float64
        )
        expected = []
        for b in range(batch):
            log_liks = []
            for k in range(n_conf):
                coords = model.decode(z[b, k], atoms="render")
                predicted = model.amplitude * render(coords, rotation[b], shift[b], ctf[b], BOX, PIXEL_SIZE)
                log_liks.append(gaussian_log_likelihood(images[b], predicted, model.noise_sigma))
            log_liks = torch.stack(log_liks)
            expected.append(torch.log(torch.exp(log_liks - log_liks.max()).mean()) + log_liks.max())
        torch.testing.assert_close(out.per_image_log_likelihood, torch.stack(expected), rtol=1e-10, atol=1e-8)
        # the structure terms of the loss are those of the decoded samples
        c = model.decode(z.reshape(-1, z.shape[-1]), atoms="C")
        n = model.decode(z.reshape(-1, z.shape[-1]), atoms="N")
        bond = backbone_continuity(c, n, model.bonded_to_next).reshape(batch, n_conf).mean()
        assert out.terms["backbone"] == pytest.approx(bond.item(), rel=1e-9)
        all_atoms = model.decode(z, atoms="all")
        centre = all_atoms.mean(dim=-2).square().sum(-1).mean()
        assert out.terms["centering"] == pytest.approx(centre.item(), rel=1e-9)


def test_structure_losses_gradcheck_through_decoder(base):
    """Backbone continuity, peptide geometry and centering of decoded structures vs finite differences
    (float64)."""
    model = make_model(base, latent_conf=4).double()
    perturb_decoder(model, seed=5, scale=0.1)
    generator = torch.Generator().manual_seed(6)
    z = torch.randn(1, model.config.latent_conf, generator=generator, dtype=torch.float64, requires_grad=True)

    def structure_loss(latent):
        rot, trans = model.decoder.frames(model.decoder.representation(latent))
        bond = backbone_continuity(
            model.decoder.atoms(rot, trans, "C"), model.decoder.atoms(rot, trans, "N"), model.bonded_to_next
        )
        backbone = [model.decoder.atoms(rot, trans, name) for name in ("CA", "C", "N")]
        peptide = peptide_geometry(*backbone, model.base_peptide_distances.double(), model.bonded_to_next)
        return bond + peptide + model.decoder.center_of_mass(rot, trans).square().sum(-1)

    assert torch.autograd.gradcheck(structure_loss, (z,))


def test_pose_latents_to_pose():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]])
    rotation, shift = latent_to_pose(z, shift_scale=4.0)
    torch.testing.assert_close(shift, torch.tensor([[2.0, -4.0]]))
    torch.testing.assert_close(rotation, torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]))
    # refine: a zero latent is exactly the given pose; a non-zero one turns it in the image frame
    given_rotation = random_rotations(3, generator=torch.Generator().manual_seed(8))
    given_shift = torch.randn(3, 2)
    same_rotation, same_shift = latent_to_pose_correction(
        torch.zeros(3, 8), given_rotation, given_shift, 0.1, 1.0
    )
    torch.testing.assert_close(same_rotation, given_rotation)
    torch.testing.assert_close(same_shift, given_shift)
    turned, _ = latent_to_pose_correction(
        torch.tensor([0.0, 0, 0, 1, 0, 0, 0, 0]), given_rotation[0], given_shift[0], 0.1, 1.0
    )
    angle = torch.arccos(((turned @ given_rotation[0].T).trace() - 1) / 2)
    assert angle.item() == pytest.approx(math.atan(0.1), abs=1e-5)


def test_stage1_renders_the_base_structure_at_the_given_pose(base):
    """In given mode at stage 1 the likelihood is that of the base structure rendered at the given pose."""
    model = make_model(base).double()
    generator = torch.Generator().manual_seed(9)
    rotation = random_rotations(2, generator=generator, dtype=torch.float64)
    shift = torch.randn(2, 2, generator=generator, dtype=torch.float64)
    images = render_projections(model.base_render_coords, rotation, shift, BOX, PIXEL_SIZE)
    out = model.loss(
        images,
        None,
        stage=1,
        n_conf=1,
        n_pose=1,
        weights=LossWeights(),
        given_rotation=rotation,
        given_shift=shift,
        pose_mode="given",
    )
    perfect = -BOX * BOX * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(out.per_image_log_likelihood, torch.full((2,), perfect, dtype=torch.float64))


def test_initialise_amplitude(base):
    model = make_model(base)
    generator = torch.Generator().manual_seed(10)
    rotation = random_rotations(64, generator=generator)
    shift = torch.zeros(64, 2)
    ctf = batch_ctf(64)
    images = 2.5 * render(model.base_render_coords, rotation, shift, ctf, BOX, PIXEL_SIZE)
    # with poses: least squares, exact for noise-free images
    assert model.initialise_amplitude(images, ctf, rotation, shift) == pytest.approx(2.5, rel=1e-4)
    assert model.amplitude.item() == pytest.approx(2.5, rel=1e-4)
    # without poses: variance matching at random rotations (noise_sigma^2 = 0.25 removed first)
    noisy = images + 0.5 * torch.randn(images.shape, generator=generator)
    estimate = model.initialise_amplitude(noisy, ctf, generator=torch.Generator().manual_seed(11))
    assert estimate == pytest.approx(2.5, rel=0.2)


def test_rejects_mismatched_box(base):
    topology, coords = base
    with pytest.raises(ValueError):
        AtomVAE(small_config(), topology, coords, box=BOX + 2, pixel_size=PIXEL_SIZE, noise_sigma=1.0)


def test_sleep_phase_teaches_the_encoder_only(base):
    model = make_model(base, render_atoms="CA", render_sigma=2.0)
    perturb_decoder(model, seed=3, scale=0.3)
    model.noise_sigma.fill_(0.02)  # high SNR: the latent is readable from the image
    generator = torch.Generator().manual_seed(0)
    n = 16
    rotation = random_rotations(n, generator=generator)
    shift = torch.zeros(n, 2)
    images = 0.1 * torch.randn(n, BOX, BOX, generator=generator)  # sets only the synthetic signal scale
    loss = model.sleep_loss(images, batch_ctf(n), rotation, shift, generator).mean()
    loss.backward()
    decoder_grads = [p.grad for p in model.decoder.parameters() if p.grad is not None]
    assert not decoder_grads  # nothing flows into the decoder
    assert all(p.grad is not None for p in model.conf_posterior.parameters())
    optimizer = torch.optim.Adam(
        list(model.encoder.parameters()) + list(model.conf_posterior.parameters()), lr=1e-3
    )
    first = float(loss.detach())
    for _ in range(120):
        optimizer.zero_grad()
        loss = model.sleep_loss(images, batch_ctf(n), rotation, shift, generator).mean()
        loss.backward()
        optimizer.step()
    last = float(model.sleep_loss(images, batch_ctf(n), rotation, shift, generator).mean().detach())
    assert last < first - 10.0  # -log q(z | y) of fresh synthetic particles fell by > 10 nats per image


def clean_search_problem(base, n: int = 6):
    """A model with a latent of 2 and a decoder that moves residues, and clean CTF'd images of n random
    latents at random rotations: (model, z_true (n, 2), rotation (n, 3, 3), shift (n, 2) A, images, the
    C-alpha RMSD (A) of decoded latents (n, 2) to the true ones' structures, and the draw's generator)."""
    model = make_model(base, latent_conf=2, render_atoms="CA", render_sigma=2.0)
    perturb_decoder(model, seed=5, scale=0.3)
    generator = torch.Generator().manual_seed(1)
    z_true = torch.randn(n, 2, generator=generator)
    rotation = random_rotations(n, generator=generator)
    shift = torch.zeros(n, 2)
    with torch.no_grad():
        images = model.render_images(model.decoder(z_true, "render"), rotation, shift, batch_ctf(n))

    def rmsd_to_truth(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (model.decoder(z, "CA") - model.decoder(z_true, "CA")).square().sum(-1).mean(-1).sqrt()

    return model, z_true, rotation, shift, images, rmsd_to_truth, generator


@pytest.mark.parametrize(("binning", "resolution"), [(1, 0.0), (2, 0.0), (1, 6.0)])
def test_conformation_search_finds_the_latent_of_a_clean_image(base, binning, resolution):
    """Full likelihood, coarse to fine on binned images, and the band below 6 A (``band_likelihood``)."""
    n = 6
    model, z_true, rotation, shift, images, rmsd_to_truth, generator = clean_search_problem(base, n)
    start = -z_true
    best, gain = model.search_conformations(
        images,
        batch_ctf(n),
        rotation,
        shift,
        start,
        32,
        0.5,
        generator,
        rounds=3,
        binning=binning,
        resolution=resolution,
    )
    assert (gain >= 0).all() and (gain > 0).any()
    assert (rmsd_to_truth(best) <= rmsd_to_truth(start) + 1e-6).all()
    assert rmsd_to_truth(best).mean() < 0.3 * rmsd_to_truth(start).mean()


def test_conformation_search_keeps_a_remembered_latent_that_explains_the_image(base):
    """A remembered latent (``atomvae.train.particle_memory``) is scored beside the fresh candidates: with
    the true latent of a clean image remembered, the search ends at least as good by its own objective and
    far nearer the true structure than without; a NaN row (nothing remembered) changes nothing."""
    n = 6
    model, z_true, rotation, shift, images, rmsd_to_truth, _ = clean_search_problem(base, n)
    # Clean images judged at a tenth of the noise: the true latent's evidence is decisive (tens of nats).
    model.noise_sigma.fill_(0.1 * float(model.noise_sigma))

    def search(remembered):
        return model.search_conformations(
            images,
            batch_ctf(n),
            rotation,
            shift,
            -z_true,
            4,
            0.5,
            torch.Generator().manual_seed(3),
            remembered=remembered,
        )

    def score(z: torch.Tensor) -> torch.Tensor:  # (n,) nats: the search's own objective
        with torch.no_grad():
            predicted = model.render_images(model.decoder(z, "render"), rotation, shift, batch_ctf(n), images)
            return gaussian_log_likelihood(images, predicted, model.noise_sigma) - 0.5 * z.square().sum(-1)

    kept, gain = search(z_true)
    assert (score(kept) >= score(z_true) - 1e-3).all() and (gain > 0).all()
    unknown = search(torch.full((n, 2), math.nan))[0]
    alone = search(None)[0]
    torch.testing.assert_close(unknown, alone)
    # Without the memory the four candidates fall short of the true latent; with it, it is kept.
    assert (score(alone) < score(z_true) - 1.0).sum() >= n // 2
    assert rmsd_to_truth(kept).max() < 0.1 and rmsd_to_truth(alone).mean() > 1.0


def test_search_loss_samples_around_the_search_and_fits_the_encoder_to_it(base):
    model = make_model(base, render_atoms="CA", render_sigma=2.0)
    perturb_decoder(model, seed=2, scale=0.2)
    n = 4
    generator = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(n, BOX, BOX, generator=generator)
    rotation = random_rotations(n, generator=generator)
    weights = LossWeights(search_candidates=8, search_width=0.1)
    out = model.loss(
        images,
        batch_ctf(n),
        stage=2,
        n_conf=2,
        n_pose=1,
        weights=weights,
        given_rotation=rotation,
        given_shift=torch.zeros(n, 2),
        pose_mode="given",
        generator=generator,
    )
    assert out.terms["search_gain"] >= 0 and out.terms["search_encoder"] > 0
    assert set(out.found) == {"latent"} and out.found["latent"].shape == (n, model.config.latent_conf)
    # the search posterior's KL: N(best, 0.1^2) in latent_conf dims is at least its variance part
    latent = model.config.latent_conf
    assert out.terms["kl_conf"] >= 0.5 * latent * (0.01 - 1 - math.log(0.01)) - 1e-4
    out.total.backward()
    assert all(p.grad is not None for p in model.conf_posterior.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    encoded = model.encode(
        images,
        "given",
        given_rotation=rotation,
        given_shift=torch.zeros(n, 2),
        ctf=batch_ctf(n),
        search=weights,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(encoded["sigma_conf"], torch.full((n, latent), 0.1))
    plain = model.encode(images, "given", given_rotation=rotation, given_shift=torch.zeros(n, 2))
    assert not torch.allclose(encoded["mu_conf"], plain["mu_conf"])


def test_render_sigma_by_kind_equals_one_width_when_the_widths_agree(base):
    by_kind = make_model(base, render_atoms="residue", learn_render_sigma=True, render_sigma_by_kind=True)
    single = make_model(base, render_atoms="residue", learn_render_sigma=True)
    assert by_kind.log_render_sigma.shape == (3,)
    generator = torch.Generator().manual_seed(0)
    n = 3
    coords = single.base_render_coords.expand(n, -1, -1)
    rotation = random_rotations(n, generator=generator)
    shift = torch.zeros(n, 2)
    a = by_kind._unit_renders(coords, rotation, shift, batch_ctf(n))
    b = single._unit_renders(coords, rotation, shift, batch_ctf(n))
    assert torch.allclose(a, b, atol=1e-5 * float(b.abs().max()))
    a.square().sum().backward()
    assert (by_kind.log_render_sigma.grad.abs() > 0).all()  # every kind present in the 10 residues


def test_binned_renders_are_the_full_renders_with_their_pixel_blocks_averaged(base):
    """Brute force: render at full size, average 2x2 blocks; the binned render (a quarter of the pixels)
    matches it to 3% without a CTF (width 1.5 A at 2 A pixels: 0.4% at 1.5 A pixels) and 25% with one (the
    CTF sampled on a 12-pixel grid; 5% on the demo's 32-pixel one): close enough to rank candidates."""
    model = make_model(base, render_sigma=1.5)
    generator = torch.Generator().manual_seed(0)
    n = 4
    coords = model.base_render_coords.expand(n, -1, -1)
    rotation = random_rotations(n, generator=generator)
    shift = torch.randn(n, 2, generator=generator)
    side = model.box // 2
    for ctf, tolerance in ((None, 0.03), (batch_ctf(n), 0.25)):
        with torch.no_grad():
            full = model._unit_renders(coords, rotation, shift, ctf)
            averaged = full.unflatten(-1, (side, 2)).unflatten(-3, (side, 2)).mean(dim=(-3, -1))
            binned = model.binned_renders(coords, rotation, shift, ctf, 2)
        assert binned.shape == (n, side, side)
        assert float((binned - averaged).norm() / averaged.norm()) < tolerance


@pytest.mark.parametrize("bodies", ["segments", "domains"])
def test_bodies_move_rigidly_about_their_base_centroids(base, bodies):
    """``segment_size`` / ``domain_bodies``: at initialisation the decoder is still the base; a body's own
    output moves its residues as one rigid body (every distance within it kept), turning about the
    centroid of its base C-alpha atoms when its translation output is zero; residues move only with their
    own body. Domains are the base's dynamic domains, and a checkpoint keeps them."""
    if bodies == "segments":
        model = make_model(base, segment_size=4)
        decoder = model.decoder
        out, group, n_groups = decoder.to_segments, decoder.segment_of_residue, decoder.n_segments
    else:
        model = make_model(base, domain_bodies=3)
        decoder = model.decoder
        out, group, n_groups = decoder.to_domains, decoder.domain_of_residue, decoder.n_domains
        assert "decoder.domain_of_residue" in model.state_dict()
        base_ca_np = decoder.base_trans.double().numpy()
        assert group.tolist() == dynamic_domains(base_ca_np, 3).tolist()
    z = torch.randn(3, model.config.latent_conf, generator=torch.Generator().manual_seed(0))
    base_ca = decoder.atoms(decoder.base_rot, decoder.base_trans, "CA")  # (R, 3): one C-alpha per residue
    torch.testing.assert_close(decoder(z, "CA"), base_ca.expand(3, -1, -1))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in decoder.blocks:  # a d that varies with z
            block.update.weight.copy_(0.3 * torch.randn(block.update.weight.shape, generator=generator))
        out.weight.copy_(0.2 * torch.randn(out.weight.shape, generator=generator))
        out.weight.view(n_groups, 9, -1)[:, 0:3] = 0.0  # rotations only
        out.bias.zero_()
    ca = decoder(z, "CA")  # (3, R, 3)
    assert n_groups == int(group.max()) + 1 >= 2
    for k in range(n_groups):
        rows = (group == k).nonzero().squeeze(-1)
        moved, still = ca[:, rows], base_ca[rows]
        torch.testing.assert_close(torch.cdist(moved, moved), torch.cdist(still, still).expand(3, -1, -1))
        torch.testing.assert_close(moved.mean(dim=1), still.mean(dim=0).expand(3, -1), atol=1e-4, rtol=0)
    assert (ca - base_ca).norm(dim=-1).max() > 0.5  # and they did turn


def test_domain_bodies_are_left_out_where_the_base_has_no_domains(base, monkeypatch):
    import atomvae.model.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "MAX_DOMAIN_RESIDUES", 3)
    with pytest.warns(UserWarning, match="no domain bodies"):
        model = make_model(base, segment_size=4, domain_bodies=3)
    assert model.decoder.n_domains == 0 and model.decoder.to_domains is None
    assert "decoder.domain_of_residue" not in model.state_dict()


def test_segments_are_runs_of_consecutive_residues_that_never_span_a_chain_break():
    import numpy as np

    from atomvae.model.decoder import residue_segments

    bonded = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)  # chains of 6 and 4 residues
    assert residue_segments(bonded, 4).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert residue_segments(bonded, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert residue_segments(np.ones(5, dtype=bool), 10).tolist() == [0] * 5


@pytest.mark.parametrize(
    ("term", "weight", "scale"),
    [("peptide_geometry", 1000.0, 0.1), ("local_contacts", 10.0, 0.3)],
)
def test_structure_term_is_zero_at_the_base_and_counted_in_the_loss(base, term, weight, scale):
    """At initialisation the decoder returns the base, so the term (the peptide unit's geometry; the
    neighbours' local contacts) is zero; once the decoder moves residues it is positive and enters the
    total with its weight."""
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, BOX, BOX, generator=generator)
    rotation = random_rotations(2, generator=generator)

    def terms(model, value):
        return model.loss(
            images,
            batch_ctf(2),
            stage=2,
            n_conf=2,
            n_pose=1,
            weights=LossWeights(**{term: value}),
            given_rotation=rotation,
            given_shift=torch.zeros(2, 2),
            pose_mode="given",
            generator=torch.Generator().manual_seed(0),
        ).terms

    model = make_model(base)
    assert terms(model, 1.0)[term] == pytest.approx(0.0, abs=1e-8)
    perturb_decoder(model, seed=1, scale=scale)
    with_term, without = terms(model, weight), terms(model, 0.0)
    assert with_term[term] > 1e-3 and without[term] == 0.0
    added = with_term["total"] - without["total"]
    assert added == pytest.approx(weight * with_term[term], rel=1e-3)
