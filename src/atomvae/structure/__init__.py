"""atomvae.structure"""
