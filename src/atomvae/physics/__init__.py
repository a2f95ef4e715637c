"""atomvae.physics"""
