"""``pyinpaint serve``: a page in the browser to paint a hole over a photo and browse n diverse fills.

An optional extra (``pip install "pyinpaint[serve]"``: Starlette, uvicorn, python-multipart). The page, its script
and style ship in ``pyinpaint/serve/static/`` (no build step, nothing fetched from elsewhere at run time).
:func:`serve` is what the command runs; :func:`pyinpaint.serve.app.create_app` builds the app for tests or another
server.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from pyinpaint.serve.work import Limits, Models, shipped_models

__all__ = ["serve", "model_choices", "Limits", "Models", "shipped_models"]


def _need_extra() -> None:
    try:
        import multipart  # noqa: F401  (python-multipart: Starlette's form parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"pyinpaint serve needs the serve extra ({e.name} is missing): "
                           "pip install \"pyinpaint[serve]\"") from None


def model_choices(model: str | os.PathLike | None = None) -> tuple[dict[str, str | Path], str]:
    """(the page's model menu: name -> model, the default name). ``model``: a shipped model's name, or a model
    directory (listed first, by its folder's name), or None (the first shipped model)."""
    choices = shipped_models()
    if model is None or str(model) in choices:
        return choices, str(model) if model is not None else next(iter(choices))
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: neither a shipped model ({', '.join(choices)}) nor a model "
                                "directory (config.json + model.safetensors)")
    name = path.resolve().name
    while name in choices:
        name += "+"
    return {name: path, **choices}, name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(model: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8000,
          device: str | None = None, limits: Limits = Limits(),
          announce: Callable[[str], object] = print) -> None:
    """Load the model, listen on ``host:port`` (port 0: any free one), announce the address, serve until Ctrl-C.
    Only the loopback address by default: another host makes the page reachable by anyone who can reach this
    machine (there is no login)."""
    _need_extra()
    import uvicorn

    from pyinpaint.serve.app import LOOPBACK_HOSTS, create_app

    choices, default = model_choices(model)
    models = Models(choices, default, device)
    inp = models.get(default)  # load now: a broken model fails here, and the first request does not wait for it
    loopback = _is_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise RuntimeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    app = create_app(models, limits, trusted_hosts=LOOPBACK_HOSTS if loopback else None)
    bound = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if family == socket.AF_INET6 else host
    announce(f"pyinpaint serve: http://{shown}:{bound}/  (model {default}, {inp.image_size} px, on {inp.device}; "
             "Ctrl-C stops)")
    if not loopback:
        announce(f"warning: listening on {host}, not the loopback address: anyone who can reach this machine can "
                 "use the page (there is no login)")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        app.state.queue.close()
        sock.close()
