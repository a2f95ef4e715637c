"""RELION Euler angles and origins, pinned by scipy, by RELION's own formulas and by projections.

The projections are rendered here (a dense sum of Gaussians on RELION's pixel grid) so the geometry
is tested without the physics module: image axis 0 is y, axis 1 is x, pixel i sits at (i - D//2) * p.
"""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomvae.geometry.euler import (
    matrix_to_relion,
    relion_origin_to_shift,
    relion_to_matrix,
    shift_to_relion_origin,
)

BOX, PIXEL, SIGMA = 33, 1.0, 1.2

# An asymmetric "molecule": no two axes look alike, so a wrong axis or sign changes the image.
MOLECULE = np.array([[0.0, 0, 0], [7, 0, 0], [0, 4, 0], [0, 0, 2], [3, 2, 1], [-5, 1, 3]], dtype=np.float64)


def project(points_img_xy: np.ndarray) -> np.ndarray:
    """Image (BOX, BOX) of unit Gaussians at image-plane positions (N, 2) = (x, y) in A."""
    grid = (np.arange(BOX) - BOX // 2) * PIXEL
    gx = np.exp(-((grid[None, :] - points_img_xy[:, :1]) ** 2) / (2 * SIGMA**2))  # (N, W)
    gy = np.exp(-((grid[None, :] - points_img_xy[:, 1:2]) ** 2) / (2 * SIGMA**2))  # (N, H)
    return np.einsum("nh,nw->hw", gy, gx)


def render(R: np.ndarray, shift_xy: np.ndarray = np.zeros(2)) -> np.ndarray:
    """Our forward model: x_img = R @ x + (t, 0), projected along +z."""
    rotated = MOLECULE @ R.T
    return project(rotated[:, :2] + shift_xy)


def random_angles(n, seed):
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(-180, 180, n), np.degrees(np.arccos(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)],
        axis=-1,
    )


def test_matches_scipy_inverse_zyz():
    angles = random_angles(200, 0)
    R = relion_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    expected = Rotation.from_euler("ZYZ", angles, degrees=True).inv().as_matrix()
    assert isinstance(R, np.ndarray) and R.shape == (200, 3, 3)
    np.testing.assert_allclose(R, expected, atol=1e-12)


def test_matches_relion_formulas():
    """RELION's Euler_angles2direction: the projection direction (rot, tilt) is the model vector
    that the matrix sends to the beam axis +z; psi is a further in-plane rotation Rz(psi)^T."""
    angles = random_angles(50, 1)
    R = relion_to_matrix(*angles.T)
    rot, tilt, psi = np.radians(angles.T)
    direction = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], axis=-1)
    beam = np.einsum("nij,nj->ni", R, direction)
    np.testing.assert_allclose(beam, np.tile([0, 0, 1.0], (50, 1)), atol=1e-12)
    Rz_T = Rotation.from_euler("z", -np.degrees(psi)[:, None], degrees=True).as_matrix()
    np.testing.assert_allclose(R, Rz_T @ relion_to_matrix(angles[:, 0], angles[:, 1], 0 * psi), atol=1e-12)


def test_torch_in_torch_out_batched_and_differentiable():
    angles = torch.tensor(random_angles(12, 2), dtype=torch.float64).view(3, 4, 3).requires_grad_(True)
    R = relion_to_matrix(angles[..., 0], angles[..., 1], angles[..., 2])
    assert isinstance(R, torch.Tensor) and R.shape == (3, 4, 3, 3) and R.dtype == torch.float64
    np.testing.assert_allclose(
        R.detach().numpy(),
        relion_to_matrix(*angles.detach().numpy().reshape(-1, 3).T).reshape(3, 4, 3, 3),
        atol=1e-12,
    )
    assert torch.autograd.gradcheck(lambda a: relion_to_matrix(a[..., 0], a[..., 1], a[..., 2]), (angles,))
    mixed = relion_to_matrix(10.0, torch.tensor([20.0, 30.0]), np.array(40.0))
    assert isinstance(mixed, torch.Tensor) and mixed.dtype == torch.float32 and mixed.shape == (2, 3, 3)
    np.testing.assert_allclose(mixed.numpy(), relion_to_matrix([10.0, 10], [20.0, 30], [40.0, 40]), atol=1e-6)
    back = matrix_to_relion(R.detach().float())
    assert isinstance(back, torch.Tensor) and back.shape == (3, 4, 3) and back.dtype == torch.float32


def test_angle_round_trip():
    angles = random_angles(500, 3)
    back = matrix_to_relion(relion_to_matrix(*angles.T))
    assert back.shape == (500, 3)
    assert np.all((back[:, 1] >= 0) & (back[:, 1] <= 180))
    np.testing.assert_allclose(back[:, 1], angles[:, 1], atol=1e-9)
    for k in (0, 2):  # rot and psi are defined mod 360
        np.testing.assert_allclose(np.angle(np.exp(1j * np.radians(back[:, k] - angles[:, k]))), 0, atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 1e-9, 1e-5, 0.01, 90.0, 179.99, 180 - 1e-5, 180 - 1e-9, 180.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrix_round_trip_including_gimbal_lock(tilt, dtype):
    rng = np.random.default_rng(4)
    rot, psi = rng.uniform(-180, 180, (2, 20))
    R = relion_to_matrix(rot, np.full(20, tilt), psi).astype(dtype)
    angles = matrix_to_relion(torch.as_tensor(R)).numpy()
    R_back = relion_to_matrix(*angles.astype(np.float64).T)
    np.testing.assert_allclose(R_back, R, atol=1e-5 if dtype == np.float32 else 1e-9)
    if tilt in (0.0, 180.0):  # locked: only rot +/- psi is defined; like RELION, rot = 0
        np.testing.assert_allclose(angles[:, 0], 0.0)
        np.testing.assert_allclose(angles[:, 1], tilt, atol=1e-4)


def test_tilt_90_projects_along_model_x():
    R = relion_to_matrix(0.0, 90.0, 0.0)
    # Explicit statement: model x goes along the beam (+z), model y stays y, model z goes to image -x.
    np.testing.assert_allclose(R, [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)
    image = render(R)
    expected = project(np.stack([-MOLECULE[:, 2], MOLECULE[:, 1]], axis=-1))
    np.testing.assert_allclose(image, expected, atol=1e-12)
    # The molecule is asymmetric: projecting along y or z gives something else.
    assert np.abs(image - project(MOLECULE[:, [0, 2]])).max() > 0.3
    assert np.abs(image - render(np.eye(3))).max() > 0.3


def test_rot_90_is_a_clockwise_in_plane_turn_of_the_model():
    # RELION: positive angles rotate the object clockwise seen along the beam; tilt 0 projects along z.
    R = relion_to_matrix(90.0, 0.0, 0.0)
    image = render(R)
    # The atom at model (7, 0, 0) appears at image (x, y) = (0, -7): row D//2 - 7, column D//2.
    single_atom = project((R @ np.array([7.0, 0, 0]))[None, :2])
    assert np.unravel_index(np.argmax(single_atom), single_atom.shape) == (BOX // 2 - 7, BOX // 2)
    expected = project(np.stack([MOLECULE[:, 1], -MOLECULE[:, 0]], axis=-1))
    np.testing.assert_allclose(image, expected, atol=1e-12)


def test_psi_rotates_the_image_in_plane():
    rot, tilt = 30.0, 70.0
    image0 = render(relion_to_matrix(rot, tilt, 0.0))
    image90 = render(relion_to_matrix(rot, tilt, 90.0))
    # x_img(psi=90) = Rz(-90) x_img(psi=0): (x, y) -> (y, -x). With an odd box the grid maps onto itself.
    # image90[y', x'] = image0[y, x] with x' = y, y' = -x  =>  image90[i, j] = image0[j, D-1-i] (indices).
    np.testing.assert_allclose(image90, np.rot90(image0, k=1), atol=1e-12)


def test_origin_shift_sign():
    origin = np.array([3.0, -5.0])  # rlnOriginXAngst, rlnOriginYAngst
    shift = relion_origin_to_shift(origin)
    np.testing.assert_allclose(shift, -origin)
    np.testing.assert_allclose(shift_to_relion_origin(shift), origin)
    assert torch.equal(relion_origin_to_shift(torch.tensor([[1.0, 2.0]])), torch.tensor([[-1.0, -2.0]]))
    R = relion_to_matrix(40.0, 100.0, -60.0)
    particle = render(R, shift)
    # RELION re-centres a particle by translating the image by +origin (x along axis 1, y along axis 0).
    recentred = np.roll(particle, shift=(int(origin[1] / PIXEL), int(origin[0] / PIXEL)), axis=(0, 1))
    np.testing.assert_allclose(recentred, render(R), atol=1e-6)
    # The particle's centre of mass sits at -origin.
    grid = (np.arange(BOX) - BOX // 2) * PIXEL
    com = np.array([(particle.sum(0) * grid).sum(), (particle.sum(1) * grid).sum()]) / particle.sum()
    centred_com = (MOLECULE @ R.T)[:, :2].mean(0)
    np.testing.assert_allclose(com - centred_com, -origin, atol=1e-3)
