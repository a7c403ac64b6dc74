"""pardiff: parallel diffusion-sampling algorithms as traced message-passing programs."""
__version__ = "0.1.0"
