"""atomvae.evaluate"""
