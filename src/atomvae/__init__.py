"""atomvae: continuous distributions of atomic protein structures from cryo-EM particle images."""

__version__ = "0.1.0"
