"""atomvae.physics: image formation (knows no networks).

grid (the pixel grid), ctf (RELION-convention CTF and its padded-FFT application), render (the
model's separable Gaussian renderer); scattering and noise hold the simulator's richer physics.
"""
