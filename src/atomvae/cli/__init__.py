"""atomvae.cli"""
