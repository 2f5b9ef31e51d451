"""`pyinpaint serve`'s HTTP API, through an HTTP client (Starlette's TestClient, httpx), with a tiny model."""
import io
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install '.[serve]'")
pytest.importorskip("multipart", reason="the serve extra is not installed: pip install '.[serve]'")
with warnings.catch_warnings():  # Starlette >= 1.x prefers httpx2 and warns about httpx; both work
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient  # noqa: E402

from pyinpaint.serve import Limits, Models, model_choices  # noqa: E402
from pyinpaint.serve.app import LOOPBACK_HOSTS, create_app  # noqa: E402


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


PHOTO = np.array(Image.fromarray(skdata.astronaut()[30:230, 130:330]).resize((80, 72)))  # W 80 x H 72, RGB


def hole_mask(h=72, w=80) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[20:44, 25:55] = 255
    return m


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    return Models({"tiny": tiny_model_dir}, device="cpu")


@pytest.fixture()
def client(models):
    app = create_app(models, Limits(max_upload_bytes=2 ** 20, max_side=512, max_n=8))
    with TestClient(app) as c:
        yield c
    app.state.queue.close()


def upload(client, data=None, name="photo.png") -> dict:
    r = client.post("/api/images", files={"image": (name, png(PHOTO) if data is None else data, "image/png")})
    assert r.status_code == 201, r.text
    return r.json()


def submit(client, photo_id, mask=None, **fields):
    fields = {k: str(v) for k, v in fields.items()}
    return client.post("/api/inpaint", data={"image": photo_id, **fields},
                       files={"mask": ("mask.png", png(hole_mask() if mask is None else mask), "image/png")})


def wait(client, job_id, timeout=60.0) -> dict:
    t0 = time.monotonic()
    while True:
        st = client.get(f"/api/jobs/{job_id}").json()
        if st["state"] in ("done", "error") or time.monotonic() - t0 > timeout:
            return st
        time.sleep(0.05)


def decode(b: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(b)))


def test_page_and_info(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("/app.js", "/style.css"):
        body = client.get(asset)
        assert body.status_code == 200
        assert "http://" not in body.text and "https://" not in body.text, f"{asset} fetches from elsewhere"
    assert "https://" not in r.text and "http://" not in r.text
    info = client.get("/api/info").json()
    assert info["models"] == ["tiny"] and info["model"] == "tiny"
    assert "resize" in info["strategies"]
    assert info["blends"] == ["poisson", "paste"]
    assert info["limits"] == {"max_upload_bytes": 2 ** 20, "max_side": 512, "max_n": 8}


def test_upload_returns_the_decoded_photo(client):
    up = upload(client)
    assert (up["width"], up["height"]) == (80, 72) and up["notes"] == []
    got = decode(client.get(up["url"]).content)
    np.testing.assert_array_equal(got, PHOTO)
    rgba = np.dstack([PHOTO, np.full(PHOTO.shape[:2], 200, np.uint8)])
    up = upload(client, png(rgba))
    assert any("alpha" in n for n in up["notes"]), up["notes"]
    np.testing.assert_array_equal(decode(client.get(up["url"]).content), PHOTO)


def test_inpaint_end_to_end(client):
    up = upload(client)
    r = submit(client, up["id"], n=3, seed=5, temperature=1.0)
    assert r.status_code == 202, r.text
    st = wait(client, r.json()["job"])
    assert st["state"] == "done", st
    assert st["seed"] == 5 and st["n"] == 3 and len(st["images"]) == 3
    hole = hole_mask() > 0
    fills = [decode(client.get(u).content) for u in st["images"]]
    for f in fills:
        assert f.shape == PHOTO.shape
        np.testing.assert_array_equal(f[~hole], PHOTO[~hole])
    assert not np.array_equal(fills[0][hole], fills[1][hole]), "the fills are not diverse"
    with zipfile.ZipFile(io.BytesIO(client.get(st["zip"]).content)) as z:
        names = sorted(z.namelist())
        assert names == [f"fill_{i:02d}_seed5.png" for i in range(3)]
        np.testing.assert_array_equal(decode(z.read(names[2])), fills[2])
    # the official composite: same samples, other fills in the hole, the photo outside it
    pasted = wait(client, submit(client, up["id"], n=3, seed=5, blend="paste").json()["job"])
    other = [decode(client.get(u).content) for u in pasted["images"]]
    assert all(np.array_equal(o[~hole], PHOTO[~hole]) and not np.array_equal(o[hole], f[hole])
               for o, f in zip(other, fills))
    # the same seed draws the same fills
    st2 = wait(client, submit(client, up["id"], n=3, seed=5).json()["job"])
    np.testing.assert_array_equal(decode(client.get(st2["images"][1]).content), fills[1])
    assert client.get(st["images"][0].replace("/0.png", "/7.png")).status_code == 404


def test_a_mask_file_is_read_as_the_cli_reads_it(client):
    up = upload(client)
    m = np.zeros((72, 80), np.uint8)
    m[5:9, 10:30] = 7  # any nonzero value is a hole
    r = client.post("/api/masks", data={"image": up["id"]}, files={"mask": ("m.png", png(m), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(decode(r.content), (m > 0).astype(np.uint8) * 255)
    r = client.post("/api/masks", data={"image": up["id"]},
                    files={"mask": ("m.png", png(np.zeros((10, 10), np.uint8)), "image/png")})
    assert r.status_code == 400 and "same size" in r.json()["error"]
    colour = np.zeros((72, 80, 3), np.uint8)
    colour[..., 0] = 255
    r = client.post("/api/masks", files={"mask": ("m.png", png(colour), "image/png")})
    assert r.status_code == 415 and "single-channel" in r.json()["error"]


@pytest.mark.parametrize("case", ["not an image", "empty file", "too large", "too many pixels", "mask size",
                                  "empty mask", "full mask", "no photo", "unknown photo"])
def test_bad_requests_get_a_clear_message(client, case):
    if case in ("not an image", "empty file", "too large", "too many pixels"):
        data = {"not an image": b"hello, this is text", "empty file": b"",
                "too large": b"\x89PNG" + bytes(2 ** 20),
                "too many pixels": png(np.zeros((600, 20, 3), np.uint8))}[case]
        r = client.post("/api/images", files={"image": ("x.png", data, "image/png")})
        status, words = {"not an image": (415, "not an image"), "empty file": (400, "empty"),
                         "too large": (413, "limit of 1.0 MB"), "too many pixels": (413, "20x600")}[case]
    else:
        up = upload(client)
        mask = {"mask size": np.full((72, 81), 255, np.uint8), "empty mask": np.zeros((72, 80), np.uint8),
                "full mask": np.full((72, 80), 255, np.uint8)}.get(case)
        photo_id = {"no photo": "", "unknown photo": "nope"}.get(case, up["id"])
        r = submit(client, photo_id, mask)
        status, words = {"mask size": (400, "81x72 pixels but the photo is 80x72"), "empty mask": (400, "empty"),
                         "full mask": (400, "whole photo"), "no photo": (400, "names no photo"),
                         "unknown photo": (404, "no photo 'nope'")}[case]
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


@pytest.mark.parametrize("field,value,words", [("n", "0", "n must be between 1 and 8"), ("n", "9", "between 1 and 8"),
                                               ("n", "two", "whole number"), ("seed", "-1", "seed must be"),
                                               ("temperature", "0", "temperature must be a positive"),
                                               ("temperature", "nan", "temperature"), ("top_k", "0", "top_k"),
                                               ("model", "../../weights/faces-128", "unknown model"),
                                               ("strategy", "stretch", "unknown strategy"),
                                               ("blend", "feather", "unknown blend")])
def test_bad_options(client, field, value, words):
    r = submit(client, upload(client)["id"], **{field: value})
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_a_failing_job_shows_its_error_and_the_server_goes_on(client):
    up = upload(client)
    bad = wait(client, submit(client, up["id"], n=1, top_k=1000).json()["job"])  # the tiny model has 32 codes
    assert bad["state"] == "error" and "top_k" in bad["error"]
    assert client.get(f"/api/jobs/{bad['job']}/0.png").status_code == 409
    good = wait(client, submit(client, up["id"], n=1, seed=1).json()["job"])
    assert good["state"] == "done"


def test_one_sampling_at_a_time_the_others_wait_with_their_place(tiny_model_dir):
    release = threading.Event()
    running = []

    class Held(Models):  # the first job holds the worker until released
        def get(self, name):
            running.append(name)
            release.wait(30)
            return super().get(name)

    app = create_app(Held({"tiny": tiny_model_dir}, device="cpu"))
    try:
        with TestClient(app) as c:
            pid = upload(c)["id"]
            jobs = [submit(c, pid, n=1, seed=i).json()["job"] for i in range(3)]
            t0 = time.monotonic()
            while not running and time.monotonic() - t0 < 10:
                time.sleep(0.01)
            states = [c.get(f"/api/jobs/{j}").json() for j in jobs]
            assert [s["state"] for s in states] == ["running", "queued", "queued"]
            assert [s.get("position") for s in states] == [None, 1, 2]
            assert [s.get("ahead") for s in states] == [None, 1, 2]
            assert len(running) == 1
            release.set()
            assert [wait(c, j)["state"] for j in jobs] == ["done"] * 3
    finally:
        release.set()
        app.state.queue.close()


@pytest.mark.parametrize("path", ["/../../etc/passwd", "/static/../../pyproject.toml", "/api/images/..%2F..%2Fetc.png",
                                  "/pyinpaint/weights/faces-128/config.json", "/app.js/../../cli.py", "/api/jobs/x.zip"])
def test_no_file_of_the_server_is_reachable(client, path):
    r = client.get(path)
    assert r.status_code == 404 and "error" in r.json()


def test_only_loopback_host_names_when_serving_on_loopback(models):
    app = create_app(models, trusted_hosts=LOOPBACK_HOSTS)
    try:
        assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/info").status_code == 200
        assert TestClient(app, base_url="http://localhost:8000").get("/api/info").status_code == 200
        assert TestClient(app, base_url="http://rebound.example:8000").get("/api/info").status_code == 400
    finally:
        app.state.queue.close()


def test_model_choices(tiny_model_dir, tmp_path):
    choices, default = model_choices(None)
    assert default == "faces" and default in choices
    choices, default = model_choices(tiny_model_dir)
    assert default == "tiny" and list(choices)[0] == "tiny" and "faces" in choices
    with pytest.raises(FileNotFoundError, match="neither a shipped model"):
        model_choices(tmp_path / "missing")


def test_cli_refuses_a_busy_port_and_a_bad_model(tiny_model_dir, capsys):
    import socket

    from pyinpaint.cli import main

    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model_dir), "--port", str(port), "--device", "cpu"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--model", "no/such/model"]) == 1
    assert "neither a shipped model" in capsys.readouterr().err
