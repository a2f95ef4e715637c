"""atomvae.train"""
