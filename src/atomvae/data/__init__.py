"""Particle data: one description of a particle set, whatever program wrote it.

- ``metadata``: RELION .star (3.0 and 3.1+), cryoSPARC .cs and cryoDRGN .pkl -> ``ParticleMetadata``
  (stack paths and indices, per-particle CTF, poses when present, pixel size, box); ``read_particles``
  picks the reader by suffix.
- ``stack``: ``ParticleStack``, the images memory-mapped from one or many .mrcs files, read lazily.
- ``dataset``: ``ParticleDataset`` for training (Fourier cropping, per-dataset normalisation, NaN/Inf
  images skipped, batched reads), ``collate`` and ``estimate_noise_sigma``.
- ``validate``: the bad-input catalogue, one check and one message per problem.
"""
