"""The web app of ``pyinpaint serve`` (Starlette): the page, its script and style (shipped in this package, read
once at start), and a small JSON API over :mod:`pyinpaint.serve.work`.

API (every error is JSON ``{"error": message}`` with a 4xx status; the page shows the message):

- ``GET /api/info``: models, strategies, blends, limits, device.
- ``POST /api/images`` (multipart ``image``): decode a photo -> ``{id, width, height, url, notes}``.
- ``GET /api/images/{id}.png``: that photo as decoded (what the page paints on, what the model sees).
- ``POST /api/masks`` (multipart ``mask``, optional ``image`` id): read a mask file (nonzero = hole) -> PNG 0/255.
- ``POST /api/inpaint`` (multipart ``image`` id, ``mask`` PNG, ``n``, ``seed``, ``temperature``, ``top_k``,
  ``model``, ``strategy``) -> 202 ``{job, state, position}``.
- ``GET /api/jobs/{id}``: queued (with its place), running (positions sampled), done (image URLs, seed) or error.
- ``GET /api/jobs/{id}/{i}.png``, ``GET /api/jobs/{id}.zip``: one fill, all fills.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pyinpaint.serve.work import Kept, Limits, Models, Queue, RequestError, blends, decode_mask, encode_png, \
    inpaint_options, store_upload, strategies

# The page may load only its own files; nothing from elsewhere (and nothing inline).
_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _form(request: Request, limits: Limits) -> dict[str, Any]:
    """The multipart form of a request whose body is at most ``limits.max_upload_bytes`` (checked as it arrives)."""
    length = request.headers.get("content-length")
    limits.check_upload_size(int(length) if length and length.isdigit() else None)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        limits.check_upload_size(len(body))
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise RequestError("send the files as multipart/form-data", 415)
    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32,
                                                         max_part_size=limits.max_upload_bytes)
    except HTTPException as e:  # malformed multipart
        raise RequestError(f"the form could not be read: {e.detail}") from None
    out: dict[str, Any] = {}
    for key, value in form.multi_items():
        out[key] = await value.read() if isinstance(value, UploadFile) else value
    return out


def _file(form: dict[str, Any], name: str) -> bytes:
    v = form.get(name)
    if not isinstance(v, (bytes, bytearray)):
        raise RequestError(f"the request has no {name} file (multipart field {name!r})")
    return bytes(v)


def create_app(models: Models, limits: Limits = Limits(), trusted_hosts: list[str] | None = None) -> Starlette:
    """The app for ``models``. ``trusted_hosts``: Host header names accepted (``LOOPBACK_HOSTS`` when serving on the
    loopback address, so that no other site can reach it by DNS rebinding); None accepts any."""
    pkg = resources.files("pyinpaint.serve") / "static"
    static = {path: (pkg.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in _STATIC.items()}
    kept = Kept(limits.keep_bytes)
    queue = Queue(models, kept)

    async def page(request: Request) -> Response:
        body, ctype = static[request.url.path]
        return Response(body, media_type=ctype, headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"})

    async def info(request: Request) -> Response:
        return JSONResponse({"models": models.names, "model": models.default, "strategies": list(strategies()),
                             "blends": list(blends()),
                             "device": models.device_name(),
                             "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_side": limits.max_side,
                                        "max_n": limits.max_n}})

    async def upload(request: Request) -> Response:
        form = await _form(request, limits)
        key, up = store_upload(kept, _file(form, "image"), limits)
        h, w = up.image.shape[:2]
        return JSONResponse({"id": key, "width": w, "height": h, "url": f"/api/images/{key}.png", "notes": up.notes},
                            status_code=201)

    async def image_png(request: Request) -> Response:
        return Response(kept.get(request.path_params["id"], "photo").png, media_type="image/png")

    async def mask(request: Request) -> Response:
        form = await _form(request, limits)
        photo = form.get("image")
        size = kept.get(photo, "photo").image.shape[:2] if isinstance(photo, str) and photo else None
        hole = decode_mask(_file(form, "mask"), limits, size)
        return Response(encode_png(hole.astype("uint8") * 255), media_type="image/png")

    async def inpaint(request: Request) -> Response:
        form = await _form(request, limits)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        model, kwargs = inpaint_options(fields, models, limits)
        if not fields.get("image"):  # an id, never a path
            raise RequestError("the request names no photo (field 'image': the id that POST /api/images returned)")
        up = kept.get(fields["image"], "photo")
        hole = decode_mask(_file(form, "mask"), limits, up.image.shape[:2])
        job = queue.submit(fields["image"], up, hole, model, kwargs)
        return JSONResponse(queue.status(job.id), status_code=202)

    async def job(request: Request) -> Response:
        return JSONResponse(queue.status(request.path_params["id"]))

    async def job_png(request: Request) -> Response:
        res = queue.result(request.path_params["id"])
        i = request.path_params["i"]
        if not 0 <= i < len(res.pngs):
            raise RequestError(f"job {res.id} has fills 0 to {len(res.pngs) - 1}, not {i}", 404)
        return Response(res.pngs[i], media_type="image/png")

    async def job_zip(request: Request) -> Response:
        jid = request.path_params["id"]
        return Response(queue.zip(jid), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="pyinpaint-{jid}.zip"'})

    async def request_error(request: Request, exc: RequestError) -> Response:
        return _error(str(exc), exc.status)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        msg = {404: f"nothing at {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(msg.get(exc.status_code, str(exc.detail)), exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(f"the server failed on this request ({type(exc).__name__}: {exc}); it goes on serving", 500)

    routes = [Route(p, page) for p in _STATIC] + [
        Route("/api/info", info),
        Route("/api/images", upload, methods=["POST"]),
        Route("/api/images/{id}.png", image_png),
        Route("/api/masks", mask, methods=["POST"]),
        Route("/api/inpaint", inpaint, methods=["POST"]),
        Route("/api/jobs/{id}.zip", job_zip),
        Route("/api/jobs/{id}", job),
        Route("/api/jobs/{id}/{i:int}.png", job_png),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)] if trusted_hosts else []
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={RequestError: request_error, HTTPException: http_error,
                                        Exception: server_error})
    app.state.queue = queue
    return app
