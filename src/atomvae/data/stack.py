"""Memory-mapped particle stacks: one or several .mrcs files read lazily as one indexable set.

Headers are read with mrcfile (``permissive=False``, so a corrupt header is an error, not a warning)
and checked against the file size before mapping: a truncated copy reports the expected and actual
sizes instead of failing inside ``mmap``. The pixel data are then mapped with ``numpy.memmap``
(offset and dtype from the header) rather than kept as open mrcfile objects, so a stack pickles
cheaply into DataLoader worker processes and reopens its maps there. The pages a read maps are released
after it (:func:`release_pages`), so the process's resident memory does not grow with the stack.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np
import torch

from atomvae.data import validate
from atomvae.errors import InputError

MAX_OPEN_MAPS = 256
# Images read between releases of the pages the reads mapped (see release_pages). 1: after every read. A
# fault on a page-cache page can map far more than the image (a whole large folio: a few random images can
# leave a large share of a freshly written stack resident), so a count of images bounds nothing; releasing
# after every read costs re-mapping the pages on the next access, small against a training step (memory
# against stack size: BENCHMARKS.md, section "Training memory against the stack size").
RELEASE_EVERY_IMAGES = 1


def release_pages(images: np.ndarray) -> None:
    """Unmap the pages of a memory map from this process (``madvise(MADV_DONTNEED)``; the next access maps
    them again from the kernel's page cache, without disk reads). Pages read through a map otherwise stay
    in the process's resident set (file-backed RSS) until it is unmapped: a pass over a 3 GB stack would
    show as 3 GB of RSS, and random batches grow it to the stack's size over an epoch. An array that is
    not a memory map is left alone."""
    mapping = getattr(images, "_mmap", None)  # numpy keeps the mmap.mmap object of a memmap here
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class StackFile:
    """Header facts of one .mrcs: n_images, box, dtype, offset (bytes), pixel_size (A, 0 = unset)."""

    def __init__(self, path: str | os.PathLike):
        self.path = validate.check_exists(path, "image stack")
        try:
            with mrcfile.open(self.path, mode="r", header_only=True, permissive=False) as mrc:
                header = mrc.header
                dtype = mrcfile.utils.data_dtype_from_header(header)
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                offset = header.nbytes + int(header.nsymbt)
                pixel_size = float(mrc.voxel_size.x)
        except (ValueError, OSError) as err:
            raise InputError(self.path, f"not a readable MRC stack ({err})") from None
        validate.check_stack_size(self.path, nz, ny, nx, dtype.itemsize, offset)
        validate.check_square(self.path, ny, nx)
        self.n_images, self.box, self.dtype, self.offset, self.pixel_size = nz, nx, dtype, offset, pixel_size

    def memmap(self) -> np.ndarray:
        """The images ``(n_images, box, box)`` as a read-only memory map in the file's dtype."""
        return np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=self.offset,
            shape=(self.n_images, self.box, self.box),
        )


class ParticleStack:
    """Particles drawn from one or several stacks, loaded lazily.

    paths: the stack files. file_index, image_index ``(N,)``: particle i is image ``image_index[i]``
    (0-based) of ``paths[file_index[i]]``; if omitted, the particles are all images of all files in
    order. ``stack[i]`` is ``(H, W)``, ``stack[indices]`` / ``stack[a:b]`` ``(n, H, W)``, float32 tensors.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        file_index: np.ndarray | None = None,
        image_index: np.ndarray | None = None,
    ):
        self.files = [StackFile(p) for p in paths]
        if not self.files:
            raise ValueError("ParticleStack needs at least one file")
        boxes = {f.box for f in self.files}
        if len(boxes) > 1:
            sizes = ", ".join(f"{f.path.name}: {f.box}" for f in self.files)
            raise InputError(self.files[0].path, f"stacks have different image sizes ({sizes})")
        self.box = self.files[0].box
        if file_index is None:
            counts = [f.n_images for f in self.files]
            file_index = np.repeat(np.arange(len(self.files)), counts)
            image_index = np.concatenate([np.arange(c) for c in counts])
        self.file_index = np.asarray(file_index, dtype=np.int64)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._read_since_release = 0

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]

    def __len__(self) -> int:
        return len(self.file_index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()  # memory maps are reopened lazily in the receiving process
        return state

    def _memmap(self, f: int) -> np.ndarray:
        """File ``f``'s memory map; at most MAX_OPEN_MAPS stay open (each holds a file descriptor, and
        RELION extraction writes one stack per micrograph: thousands of files)."""
        if f in self._maps:
            self._maps.move_to_end(f)
            return self._maps[f]
        if len(self._maps) >= MAX_OPEN_MAPS:
            self._maps.popitem(last=False)
        self._maps[f] = self.files[f].memmap()
        return self._maps[f]

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Images of particles ``indices (n,)`` as float32 numpy ``(n, H, W)`` (in the given order)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), self.box, self.box), dtype=np.float32)
        files = self.file_index[indices]
        images = self.image_index[indices]
        for f in np.unique(files):
            where = np.flatnonzero(files == f)
            # sorted reads walk the file forwards; np.unique also drops repeats
            wanted, inverse = np.unique(images[where], return_inverse=True)
            out[where] = self._memmap(int(f))[wanted][inverse]  # a copy: the maps' pages can go
        self._read_since_release += len(indices)
        if self._read_since_release >= RELEASE_EVERY_IMAGES:
            for images_of_file in self._maps.values():
                release_pages(images_of_file)
            self._read_since_release = 0
        return out

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return torch.from_numpy(self.read(np.array([idx]))[0])
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return torch.from_numpy(self.read(np.asarray(idx)))
