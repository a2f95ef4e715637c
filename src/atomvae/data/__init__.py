"""atomvae.data"""
