"""The web viewer: the page and its files over HTTP, then the page itself in headless Chromium (Debian's
``chromium``, driven by playwright; WebGL through SwiftShader) against a real server on 127.0.0.1.

The browser tests keep their screenshots as docs/viewer.png, docs/viewer_grasps.png, docs/viewer_live.png and
docs/viewer_live_smoothing.png (the last frame of the live sequence, unsmoothed left, smoothed right).
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import trimesh

from models import skeleton
from service.rest.viewer import CONTENT_SECURITY_POLICY, STATIC_DIR

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SAMPLE = json.loads((REPO / "models" / "assets" / "sample_keypoints.json").read_text())
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]


def box_obj(size=(0.06, 0.04, 0.1)) -> bytes:
    """A closed box (metres) as an OBJ file."""
    return trimesh.creation.box(extents=size).export(file_type="obj").encode()


# ---------------------------------------------------------------- over HTTP


def test_page_is_served_at_root_and_viewer_with_a_same_origin_csp(live_server) -> None:
    for path in ("/", "/viewer"):
        response = httpx.get(live_server.http_url + path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert csp == CONTENT_SECURITY_POLICY
        directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert all(value in ("'self'", "'none'") for value in directives.values()), directives
        # every URL the page names is on this origin
        assert not re.search(r"(src|href)=\"(?!/)", response.text)


def test_static_files_and_config(live_server) -> None:
    url = live_server.http_url
    for name in ("viewer.js", "live.js", "viewer.css", "favicon.svg", "vendor/three/three.module.min.js", "vendor/three/LICENSE"):
        response = httpx.get(f"{url}/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC_DIR / name).read_bytes()
    assert "MIT License" in httpx.get(f"{url}/static/vendor/three/LICENSE").text
    script = httpx.get(f"{url}/static/vendor/three/three.core.min.js", headers={"Accept-Encoding": "gzip"})
    assert script.headers["content-encoding"] == "gzip"

    config = httpx.get(f"{url}/viewer/config.json").json()
    settings = live_server.engine.settings
    assert config["resolutions"] == list(settings.resolutions)
    assert config["default_resolution"] == settings.default_resolution
    assert config["sample"]["keypoints"] == SAMPLE["keypoints"]
    assert np.shape(config["sample_sequence"]["keypoints"]) == (90, 21, 3)
    for order, bones in config["joint_orders"].items():
        # the bones join the same joints whatever the order: compare their end points on a random hand
        hand = np.random.default_rng(0).random((21, 3))
        in_order = skeleton.from_mano(hand, order)
        np.testing.assert_array_equal(in_order[np.array(bones)], hand[skeleton.bones("mano")])
    # the page is not an API operation
    assert "/viewer/config.json" not in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_object_endpoint_returns_the_uploaded_mesh_or_names_the_field(live_server) -> None:
    url = live_server.http_url
    answer = httpx.post(f"{url}/object", files={"file": ("box.obj", box_obj())})
    assert answer.status_code == 200
    mesh = answer.json()
    vertices = np.array(mesh["vertices"])
    np.testing.assert_allclose(vertices.max(axis=0) - vertices.min(axis=0), [0.06, 0.04, 0.1], atol=1e-6)
    assert len(mesh["faces"]) == 12
    bad = httpx.post(f"{url}/object", files={"file": ("box.xyz", b"1 2 3")})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("file: unsupported extension")
    assert httpx.post(f"{url}/object", json={}).status_code == 415
    timing = answer.headers["server-timing"]
    assert re.fullmatch(r"app;dur=\d+\.\d", timing), timing


# ---------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev dependency) is not installed")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --dev installs it)")
    with sync_api.sync_playwright() as playwright:
        # playwright gives every launch a fresh temporary profile (user data dir)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Visit:
    """One page in a fresh browser context, recording console errors and every request's URL."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1200, "height": 760}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.goto(url)

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready=true]", timeout=120_000)

    def canvas(self) -> np.ndarray:
        """The 3D view as (H, W, 3) integer RGB."""
        from PIL import Image

        png = self.page.locator("#view canvas").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def skin_pixels(self) -> np.ndarray:
        """Mask of the canvas pixels in the hand's skin colour (lit or shaded)."""
        r, g, b = np.moveaxis(self.canvas(), -1, 0)
        return (r > 90) & (r - g > 15) & (g - b > 12) & (r - b > 50)

    def joint_pixels(self) -> np.ndarray:
        """Mask of the canvas pixels in the keypoint overlay's cyan."""
        r, g, b = np.moveaxis(self.canvas(), -1, 0)
        return (r < 110) & (g > 150) & (b > 200)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, live_server) -> Iterator[Visit]:
    page = Visit(browser, live_server.http_url + "/")
    yield page
    page.close()


def test_page_shows_the_sample_hand_with_no_errors_and_no_other_origin(visit, live_server) -> None:
    visit.wait_ready()
    skin = visit.skin_pixels()
    assert skin.mean() > 0.03, f"only {skin.mean():.2%} of the canvas is skin-coloured"
    assert "Hand meshed" in visit.page.inner_text("#status")
    assert re.search(r"server \d+ ms", visit.page.inner_text("#mesh-timing"))
    visit.page.screenshot(path=str(DOCS / "viewer.png"))
    # the keypoint overlay toggles off and on
    assert visit.joint_pixels().sum() > 200
    visit.page.uncheck("#overlay")
    assert visit.joint_pixels().sum() == 0
    visit.page.check("#overlay")
    assert visit.joint_pixels().sum() > 200
    assert visit.errors == []
    assert visit.requests and all(url.startswith(live_server.http_url + "/") for url in visit.requests), visit.requests


def test_pasted_keypoints_update_the_mesh(visit, live_server) -> None:
    visit.wait_ready()
    before = visit.skin_pixels()
    # the sample hand as a left hand, turned a quarter around the wrist: a different silhouette
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    keypoints = (np.array(SAMPLE["keypoints"]) @ turn.T).round(5).tolist()
    visit.page.fill("#keypoints", json.dumps(keypoints))
    visit.page.select_option("#hand", "left")
    visit.page.select_option("#resolution", "64")
    visit.page.click("#mesh-button")
    assert visit.page.inner_text("#status") == "Meshing the hand…"
    visit.page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Hand meshed')")
    after = visit.skin_pixels()
    assert after.mean() > 0.03
    changed = (before != after).mean()
    assert changed > 0.02, f"only {changed:.2%} of the canvas changed"
    # the download is the server's GLB of the hand on screen: a left hand, turned like the keypoints
    with visit.page.expect_download() as download:
        visit.page.click('[data-download="glb"]')
    assert download.value.suggested_filename == "hand.glb"
    body = {"keypoints": keypoints, "hand": "left", "joint_order": "mano", "resolution": 64, "format": "glb"}
    expected = httpx.post(f"{live_server.http_url}/mesh", json=body, timeout=120)
    assert Path(download.value.path()).read_bytes() == expected.content
    assert visit.errors == []


def test_sequence_is_meshed_in_batches_and_plays(visit, live_server) -> None:
    visit.wait_ready()
    base = np.array(SAMPLE["keypoints"])
    frames = [(base * (1 + 0.02 * t)).round(5).tolist() for t in range(10)]  # a hand growing by 2 % a frame
    visit.page.fill("#keypoints", json.dumps(frames))
    visit.page.select_option("#resolution", "64")
    meshed = live_server.metric("halo_requests_total", {"endpoint": "mesh", "protocol": "rest", "status": "200"})
    visit.page.click("#mesh-button")
    visit.page.wait_for_function("() => !document.querySelector('#play-button').disabled", timeout=120_000)
    assert "10 frames loaded" in visit.page.inner_text("#sequence-progress")
    # 10 frames in batches of 8: two requests
    after = live_server.metric("halo_requests_total", {"endpoint": "mesh", "protocol": "rest", "status": "200"})
    assert after - meshed == 2
    visit.page.click("#play-button")
    visit.page.wait_for_function("() => document.querySelector('#frame-label').textContent.startsWith('frame 5 ')")
    visit.page.click("#play-button")
    visit.page.fill("#frame-slider", "9")
    assert visit.page.inner_text("#frame-label") == "frame 10 / 10"
    assert visit.errors == []


def _play_live(visit: Visit, smooth: str) -> dict:
    """Plays the sample sequence once through the Live tab at resolution 64; the page's counts when it ends."""
    visit.page.select_option("#live-resolution", "64")
    visit.page.select_option("#live-smooth", smooth)
    visit.page.uncheck("#live-loop")
    visit.page.click("#live-button")
    visit.page.wait_for_selector("body[data-live-ended]", state="attached", timeout=120_000)
    return visit.page.evaluate("() => ({...document.body.dataset})")


def test_live_tab_streams_the_sample_sequence_over_the_websocket(visit, live_server) -> None:
    from PIL import Image

    visit.wait_ready()
    visit.page.click('#tabs button[data-tab="live"]')
    visit.page.uncheck("#overlay")  # the surfaces alone, to compare the smoothing
    meshed_before = live_server.metric("halo_stream_frames_total", {"protocol": "websocket", "outcome": "meshed"})
    views = {}
    for smooth in ("0", "10"):
        counts = _play_live(visit, smooth)
        assert counts["liveEnded"] == "sequence played"
        # every frame sent is meshed or reported skipped: the newest frame won, the last one is always meshed
        assert int(counts["liveMeshed"]) + int(counts["liveSkipped"]) == 90 and int(counts["liveMeshed"]) > 0
        assert "Live stream ended" in visit.page.inner_text("#status")
        views[smooth] = visit.canvas()
        assert visit.skin_pixels().mean() > 0.01
        if smooth == "10":
            visit.page.screenshot(path=str(DOCS / "viewer_live.png"))
    meshed = live_server.metric("halo_stream_frames_total", {"protocol": "websocket", "outcome": "meshed"})
    assert meshed - meshed_before >= 2
    # both end on the sequence's last frame: only the smoothing differs, and it shows
    assert (views["0"] != views["10"]).any(axis=-1).mean() > 0.002
    rows, columns = np.nonzero((views["0"] != views["10"]).any(axis=-1) | (views["10"].sum(-1) > 300))
    crop = (slice(max(rows.min() - 40, 0), rows.max() + 40), slice(max(columns.min() - 40, 0), columns.max() + 40))
    side_by_side = np.concatenate([views["0"][crop], views["10"][crop]], axis=1).astype(np.uint8)
    Image.fromarray(side_by_side).save(DOCS / "viewer_live_smoothing.png")
    assert visit.errors == []


def test_bad_keypoints_file_shows_the_servers_422_next_to_the_keypoints(visit, live_server, tmp_path) -> None:
    visit.wait_ready()
    millimetres = (np.array(SAMPLE["keypoints"]) * 1000).tolist()
    expected = httpx.post(f"{live_server.http_url}/mesh", json={"keypoints": millimetres})
    assert expected.status_code == 422
    path = tmp_path / "hand_mm.json"
    path.write_text(json.dumps({"keypoints": millimetres}))
    visit.page.set_input_files("#keypoints-file", str(path))
    error = visit.page.locator('#tab-hand [data-error-for="keypoints"]')
    error.wait_for(state="visible")
    assert error.inner_text() == expected.json()["detail"]
    assert "millimetres" in error.inner_text()


def test_grasps_on_an_uploaded_object_fill_the_metrics_table(visit, tmp_path) -> None:
    visit.wait_ready()
    visit.page.click('#tabs [data-tab="grasps"]')
    path = tmp_path / "box.obj"
    path.write_bytes(box_obj())
    visit.page.set_input_files("#object-file", str(path))
    visit.page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Object: 8 vertices')")
    visit.page.fill("#num-samples", "2")
    visit.page.select_option("#grasp-resolution", "64")  # two refined grasps at 64: a few seconds on a free CPU
    visit.page.check("#physics")
    visit.page.click("#grasp-button")
    visit.page.wait_for_function(
        "() => !document.querySelector('#grasp-button').disabled", polling=500, timeout=300_000
    )
    rows = visit.page.locator("#metrics tbody tr")
    assert rows.count() == 2, visit.page.inner_text("#status")
    headers = visit.page.locator("#metrics thead th").all_inner_texts()
    assert "depth mm" in headers and "contact" in headers and "stable" in headers and "worst cm" in headers
    for row in range(2):
        cells = rows.nth(row).locator("td").all_inner_texts()
        assert cells[1] == str(row + 1)
        held = headers.index("held dirs")
        assert re.fullmatch(r"[0-6]", cells[held]), cells  # a count of gravity directions
        assert all(re.fullmatch(r"-?\d+\.\d\d|yes|no", cell) for cell in cells[2:held] + cells[held + 1:]), cells
    assert re.search(r"server \d+ ms", visit.page.inner_text("#grasp-timing"))
    assert "refine on" in visit.page.inner_text("#status") and "physics on" in visit.page.inner_text("#status")
    visit.page.screenshot(path=str(DOCS / "viewer_grasps.png"))
    assert visit.errors == []


def test_with_a_token_the_page_asks_for_it_and_sends_it(browser, server_factory) -> None:
    server = server_factory(auth_token="s3cret-token")
    assert httpx.get(server.http_url + "/").status_code == 200
    page = Visit(browser, server.http_url + "/")
    try:
        page.page.locator("#token-form").wait_for(state="visible")
        assert "authorization" in page.page.inner_text('[data-error-for="authorization"]')
        page.page.fill("#token", "s3cret-token")
        page.page.click("#token-form button")
        page.page.wait_for_function("() => document.querySelector('#status').textContent.includes('Hand meshed')")
        assert page.skin_pixels().mean() > 0.03
        # the 401 itself is logged by Chromium as a failed resource; nothing else may fail
        assert all("401" in error for error in page.errors), page.errors
    finally:
        page.close()
