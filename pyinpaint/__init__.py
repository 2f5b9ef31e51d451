"""pyinpaint: diverse image inpainting with a hierarchical VQ-VAE (Peng et al., CVPR 2021, "DSI")."""
__version__ = "0.1.0"


def __getattr__(name):  # the inference API, imported on first use (keeps `import pyinpaint` light)
    if name in ("sample", "Inpainter"):
        from pyinpaint import inpainter

        return getattr(inpainter, name)
    raise AttributeError(f"module 'pyinpaint' has no attribute {name!r}")


__all__ = ["sample", "Inpainter", "__version__"]
