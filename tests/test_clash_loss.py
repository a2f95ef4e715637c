"""C-alpha clash penalty: hand-computed values, the neighbour mask, and gradients."""

import torch

from atomvae.model.losses import clash_penalty, non_neighbour_pairs


def test_non_neighbour_mask_excludes_bonded_neighbours_only():
    bonded = torch.tensor([True, False, True, False])  # 0-1 bonded, 1|2 a gap, 2-3 bonded, 3 chain end
    mask = non_neighbour_pairs(bonded)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3)]:  # 1-2 across the gap counts
        expected[i, j] = True
    assert torch.equal(mask, expected)


def test_penalty_hand_computed():
    # Residues 0 and 2 are 3 A apart (1 A inside a 4 A cutoff); 0-1 and 1-2 are bonded neighbours.
    ca = torch.tensor([[0.0, 0.0, 0.0], [1.5, 1.0, 0.0], [3.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    mask = non_neighbour_pairs(torch.tensor([True, True, True, False]))
    assert torch.allclose(clash_penalty(ca, mask, 4.0), torch.tensor(1.0))
    assert torch.allclose(clash_penalty(ca, mask, 2.5), torch.tensor(0.0))
    batched = torch.stack([ca, ca * 10.0])  # second structure: nothing within 4 A
    assert torch.allclose(clash_penalty(batched, mask, 4.0), torch.tensor([1.0, 0.0]))


def test_penalty_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    ca = (torch.randn(2, 6, 3, generator=generator, dtype=torch.float64) * 2.5).requires_grad_()
    mask = non_neighbour_pairs(torch.ones(6, dtype=torch.bool))
    assert float(clash_penalty(ca.detach(), mask, 4.0).sum()) > 0  # the random structures do clash
    assert torch.autograd.gradcheck(lambda x: clash_penalty(x, mask, 4.0), (ca,))


def rotation_z(angle: float) -> torch.Tensor:
    angle = torch.tensor(angle, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_neighbour_orientation_hand_computed():
    from atomvae.geometry.rotations import random_rotations
    from atomvae.model.losses import neighbour_orientation, relative_orientations

    base = random_rotations(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bonded = torch.tensor([True, True, False, False])  # pairs 0-1 and 1-2 bonded; 2|3 a break
    reference = relative_orientations(base)
    zero = torch.tensor(0.0, dtype=torch.float64)
    assert torch.allclose(neighbour_orientation(base, reference, bonded), zero)
    # A global rotation of the whole structure changes no relative orientation.
    turned = rotation_z(0.7) @ base
    assert torch.allclose(neighbour_orientation(turned, reference, bonded), zero, atol=1e-12)
    # Turning residue 2 alone by theta (in its own frame) changes pair 1-2 by theta:
    # |dR|_F^2 = 4 (1 - cos theta); the 2|3 pair is a break and is not counted; the mean runs over
    # the two bonded pairs.
    theta = 0.3
    moved = base.clone()
    moved[2] = base[2] @ rotation_z(theta)
    expected = 4 * (1 - torch.cos(torch.tensor(theta, dtype=torch.float64))) / 2
    assert torch.allclose(neighbour_orientation(moved, reference, bonded), expected)


def test_neighbour_orientation_gradient():
    from atomvae.geometry.rotations import six_d_to_rotation
    from atomvae.model.losses import neighbour_orientation, relative_orientations

    generator = torch.Generator().manual_seed(2)
    base_six_d = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    reference = relative_orientations(six_d_to_rotation(base_six_d))
    six_d = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    bonded = torch.tensor([True, True, False, True, False])
    assert torch.autograd.gradcheck(
        lambda x: neighbour_orientation(six_d_to_rotation(x), reference, bonded), (six_d,)
    )
