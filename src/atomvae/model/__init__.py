"""atomvae.model"""
