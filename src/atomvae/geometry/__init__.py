"""atomvae.geometry"""
