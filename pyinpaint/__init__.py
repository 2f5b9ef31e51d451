"""pyinpaint: diverse image inpainting with a hierarchical VQ-VAE (Peng et al., CVPR 2021, "DSI")."""

__version__ = "0.1.0"
