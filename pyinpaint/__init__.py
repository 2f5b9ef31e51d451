"""pyinpaint: diverse image inpainting with a hierarchical VQ-VAE (Peng et al., CVPR 2021, "DSI")."""
import importlib.util as _ilu
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _kernels_from_checkout() -> None:
    # Installed, the Triton kernels ship inside the package (pyinpaint/kernels). In a source checkout they
    # live beside it (../kernels): register them under the same name so the checkout imports and runs
    # (without the compiled extension, which then says why it is not used).
    here = _os.path.dirname(__file__)
    if _os.path.isdir(_os.path.join(here, "kernels")) or "pyinpaint.kernels" in _sys.modules:
        return
    src = _os.path.join(_os.path.dirname(here), "kernels")
    if not _os.path.isfile(_os.path.join(src, "__init__.py")):
        return
    spec = _ilu.spec_from_file_location("pyinpaint.kernels", _os.path.join(src, "__init__.py"),
                                        submodule_search_locations=[src])
    module = _ilu.module_from_spec(spec)
    _sys.modules["pyinpaint.kernels"] = module
    spec.loader.exec_module(module)


_kernels_from_checkout()


def __getattr__(name):  # the inference API, imported on first use (keeps `import pyinpaint` light)
    if name in ("sample", "Inpainter"):
        from pyinpaint import inpainter

        return getattr(inpainter, name)
    raise AttributeError(f"module 'pyinpaint' has no attribute {name!r}")


__all__ = ["sample", "Inpainter", "__version__"]
