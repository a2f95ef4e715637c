"""Memory-mapped stacks and the training dataset: lazy indexing, dtypes, Fourier crop, normalisation."""

from __future__ import annotations

import os
import pickle

import mrcfile
import numpy as np
import pytest
import torch

from atomvae.data import dataset as ds
from atomvae.data.metadata import read_star
from atomvae.data.stack import ParticleStack
from particle_fixtures import BOX, PIXEL, make_particle_set, write_mrcs, write_star31


def test_several_stacks_lazy_indexing(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8, 8)).astype(np.float32)
    b = rng.normal(size=(3, 8, 8)).astype(np.float32)
    stack = ParticleStack([write_mrcs(tmp_path / "a.mrcs", a), write_mrcs(tmp_path / "b.mrcs", b)])
    everything = np.concatenate([a, b])
    assert len(stack) == 8 and stack.box == 8
    np.testing.assert_array_equal(stack[:].numpy(), everything)
    np.testing.assert_array_equal(stack[6].numpy(), b[1])
    order = np.array([7, 0, 3, 3, 5])  # unsorted, repeated, across files
    batch = stack[order]
    assert batch.dtype == torch.float32 and batch.shape == (5, 8, 8)
    np.testing.assert_array_equal(batch.numpy(), everything[order])
    # explicit mapping particle -> (file, image), as metadata gives it
    mapped = ParticleStack([tmp_path / "a.mrcs", tmp_path / "b.mrcs"], file_index=[1, 0], image_index=[2, 4])
    np.testing.assert_array_equal(mapped[:].numpy(), np.stack([b[2], a[4]]))


def test_other_dtypes_become_float32_and_stack_pickles(tmp_path):
    data = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4) - 10
    with mrcfile.new(tmp_path / "i.mrcs") as mrc:
        mrc.set_data(data)
    stack = ParticleStack([tmp_path / "i.mrcs"])
    np.testing.assert_array_equal(stack[:].numpy(), data.astype(np.float32))
    stack[0]  # opens the memory map
    again = pickle.loads(pickle.dumps(stack))  # e.g. into a DataLoader worker
    np.testing.assert_array_equal(again[1].numpy(), data[1].astype(np.float32))


def test_fourier_crop_keeps_low_frequencies_and_mean():
    box, small = 32, 16
    y, x = torch.meshgrid(*(torch.arange(box, dtype=torch.float64),) * 2, indexing="ij")
    # a band-limited image (frequencies 1 and 3 cycles per box) is reproduced exactly on the coarse grid
    image = 2.0 + torch.cos(2 * torch.pi * 3 * x / box) + 0.5 * torch.sin(2 * torch.pi * 1 * y / box)
    cropped = ds.fourier_crop(image[None].double(), small)[0]
    ys, xs = torch.meshgrid(*(torch.arange(small, dtype=torch.float64),) * 2, indexing="ij")
    expected = 2.0 + torch.cos(2 * torch.pi * 3 * xs / small) + 0.5 * torch.sin(2 * torch.pi * 1 * ys / small)
    torch.testing.assert_close(cropped, expected.double(), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        ds.fourier_crop(image[None], 15)


def test_background_normalisation_by_hand(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(loc=5.0, scale=3.0, size=(20, 16, 16)).astype(np.float32)
    images += np.arange(20, dtype=np.float32)[:, None, None]  # per-image offsets
    path = write_mrcs(tmp_path / "n.mrcs", images)
    from atomvae.data.metadata import ParticleMetadata
    from atomvae.physics.ctf import CTFParams

    meta = ParticleMetadata(
        image_paths=(path,),
        file_index=np.zeros(20, dtype=np.int64),
        image_index=np.arange(20),
        ctf=CTFParams(
            defocus_u=torch.full((20,), 1e4, dtype=torch.float64), defocus_v=torch.full((20,), 1e4)
        ),
        pixel_size=PIXEL,
        box=16,
    )
    data = ds.ParticleDataset(meta, mask_radius=5.0, n_estimate=20)
    mask = ds.background_mask(16, 5.0).numpy()
    # hand computation: subtract each image's background mean, divide by the pooled background std
    centred = images.astype(np.float64) - images[:, mask].mean(axis=1)[:, None, None]
    scale = centred[:, mask].std(ddof=1)
    np.testing.assert_allclose(data[3]["image"].numpy(), centred[3] / scale, rtol=1e-5, atol=1e-5)
    assert data.noise_sigma == pytest.approx(1.0, rel=1e-5)
    assert data.scale == pytest.approx(scale, rel=1e-5)
    raw = ds.ParticleDataset(meta, normalize="none", mask_radius=5.0, n_estimate=20)
    np.testing.assert_array_equal(raw[3]["image"].numpy(), images[3])
    assert raw.noise_sigma == pytest.approx(scale, rel=1e-5)


def test_dataset_items_and_loader_batches(tmp_path):
    ps = make_particle_set(seed=5)
    meta = read_star(write_star31(tmp_path, ps))
    data = ds.ParticleDataset(meta, downsample_to=8, normalize="none")
    assert data.box == 8 and data.pixel_size == pytest.approx(PIXEL * BOX / 8)
    item = data[2]
    assert item["image"].shape == (8, 8) and item["image"].dtype == torch.float32
    assert int(item["index"]) == 2
    torch.testing.assert_close(item["rotation"], torch.as_tensor(ps.rotation[2], dtype=torch.float32))
    assert float(item["ctf"].defocus_u) == pytest.approx(ps.defocus_u[2], rel=1e-6)
    expected = ds.fourier_crop(torch.from_numpy(ps.images[2]), 8)
    torch.testing.assert_close(item["image"], expected)
    batches = list(data.loader(batch_size=3, shuffle=True, seed=0))
    seen = torch.cat([b["index"] for b in batches]).sort().values
    assert seen.tolist() == list(range(ps.n))
    first = batches[0]
    assert first["image"].shape == (3, 8, 8) and first["ctf"].shape == (3,) and first["shift"].shape == (3, 2)
    for k, row in enumerate(first["index"].tolist()):
        torch.testing.assert_close(first["image"][k], data[row]["image"])
    # per-item dicts collate to the same batch
    manual = ds.collate([data[int(i)] for i in first["index"]])
    torch.testing.assert_close(manual["image"], first["image"])
    torch.testing.assert_close(manual["ctf"].defocus_v, first["ctf"].defocus_v)


def test_estimate_noise_sigma_on_pure_noise():
    g = torch.Generator().manual_seed(0)
    images = 0.7 * torch.randn(50, 32, 32, generator=g) + torch.randn(50, 1, 1, generator=g)
    mask = ds.background_mask(32, 12.0)
    assert ds.estimate_noise_sigma(images, mask) == pytest.approx(0.7, rel=0.02)


def test_many_stacks_keep_few_files_open(tmp_path, monkeypatch):
    """One stack per micrograph (RELION extraction): only MAX_OPEN_MAPS memory maps stay open."""
    from atomvae.data import stack as stack_module

    monkeypatch.setattr(stack_module, "MAX_OPEN_MAPS", 3)
    rng = np.random.default_rng(2)
    images = rng.normal(size=(10, 2, 8, 8)).astype(np.float32)
    paths = [write_mrcs(tmp_path / f"mic{i}.mrcs", images[i]) for i in range(10)]
    stack = ParticleStack(paths)
    order = rng.permutation(20)
    np.testing.assert_array_equal(stack[order].numpy(), images.reshape(20, 8, 8)[order])
    assert len(stack._maps) == 3


def _file_backed_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_reading_a_stack_does_not_leave_its_pages_resident(tmp_path, monkeypatch):
    """Pages read through a memory map stay in the process's RSS until released: a pass over a 32 MiB stack
    must not leave ~32 MiB of file-backed RSS behind (memory would grow with the stack)."""
    from atomvae.data import stack as stack_module

    monkeypatch.setattr(stack_module, "RELEASE_EVERY_IMAGES", 256)  # each read below releases
    images = np.random.default_rng(3).normal(size=(2048, 64, 64)).astype(np.float32)  # 32 MiB
    stack = ParticleStack([write_mrcs(tmp_path / "a.mrcs", images)])
    before = _file_backed_rss_mib()
    for start in range(0, 2048, 256):
        np.testing.assert_array_equal(stack[start : start + 256].numpy(), images[start : start + 256])
    order = np.random.default_rng(4).permutation(2048)[:512]
    np.testing.assert_array_equal(stack[order].numpy(), images[order])  # random access, after a release
    assert _file_backed_rss_mib() - before < 8.0
