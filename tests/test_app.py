"""The scene browser: its views are what the devkit says, and it serves on localhost."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np

from app import build_app, render
from fusion.data.browse import Browser


def test_views_of_a_sample(tiny_root):
    browser = Browser(tiny_root, "v1.0-mini")
    token = browser.samples(browser.scenes()[1]["token"])[0]
    cams, bev, rows = render(browser, token, nsweeps=3)
    assert [c for _, c in cams] == ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK",
                                    "CAM_BACK_RIGHT"]  # fmt: skip
    assert cams[0][0].shape == (180, 320, 3) and bev.shape == (600, 600, 3)
    assert len(rows) == len(browser.nusc.get("sample", token)["anns"])
    # Boxes were drawn: at least one camera image differs from the raw file.
    raw = [browser.camera(token, c)[0] for c in ("CAM_FRONT_LEFT", "CAM_FRONT")]
    assert any(not np.array_equal(raw[i], cams[i][0]) for i in range(2))
    # LiDAR in the flat ego frame: the ground (most returns) lies at z = 0, where the ego poses are.
    points, footprints = browser.lidar(token)
    assert abs(np.percentile(points[:, 2], 25)) < 0.05
    assert all(f.corners.shape == (2, 4) for f in footprints)


def test_app_serves_on_localhost_and_explains_a_missing_dataset(tiny_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(tiny_root, "v1.0-mini")
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).status == 200
    finally:
        app.close()
    missing = build_app(str(tmp_path / "nothing"), "v1.0-mini")
    assert "make run" in str(missing.config)
