"""The served app through `gradio_client`: the `show` and `ask` endpoints, bad questions, 20 concurrent asks, what
gradio will serve (nothing from the data root or outside the app's temp folder), and a missing dataset."""

from __future__ import annotations

import os
import types
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_helpers import expected_count

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module", autouse=True)
def client_downloads(tmp_path_factory):
    """Where the clients put what they download. gradio_client downloads each file into a new folder of the temporary
    directory and leaves the folder behind, empty, when it moves the file on (24 in /tmp per run of this module).
    Only the client's module is pointed at pytest's folder: the server, in this process, checks the files it serves
    against the real temporary directory."""
    folder = tmp_path_factory.mktemp("gradio_client")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gradio_client.client, "tempfile", types.SimpleNamespace(gettempdir=lambda: str(folder)))
        yield folder


def _client(url: str, downloads) -> gradio_client.Client:
    return gradio_client.Client(url, verbose=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def client(app_server, client_downloads):
    return _client(app_server[0], client_downloads)


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code


def test_show_returns_every_view(client, app_server):
    state = app_server[1]
    scene = state.browser.scenes()[1]["token"]
    token, cameras, bev, glb, detections, annotations = client.predict(scene, 2, 1, "fused", 0.0, None,
                                                                       api_name="/show")  # fmt: skip
    assert token == state.browser.samples(scene)[2]
    assert len(cameras) == 6 and [c["caption"] for c in cameras][:2] == ["CAM_FRONT_LEFT", "CAM_FRONT"]
    assert bev.endswith((".png", ".webp", ".jpeg", ".jpg")) and glb.endswith(".glb")
    records = state.predictor.predict(token, "fused")
    assert len(detections["data"]) == len(records)  # threshold 0: every box the checkpoint decoded
    assert len(annotations["data"]) == len(state.browser.nusc.get("sample", token)["anns"])
    # The modality switch reruns the model on the same sample: LiDAR-only boxes differ from the fused ones.
    lidar = client.predict(scene, 2, 1, "lidar", 0.0, None, api_name="/show")[4]["data"]
    assert lidar != detections["data"]


def test_show_refuses_what_is_not_a_scene_token(client):
    with pytest.raises(Exception, match="not in the list of choices"):  # the scene dropdown's own check
        client.predict("../../etc/passwd", 0, 1, "fused", 0.3, None, api_name="/show")


def test_ask_answers_first_and_grounds_the_objects(client, app_server, first_sample):
    nusc = app_server[1].browser.nusc
    text, score, grounded = client.predict(first_sample, "How many cars are there?", api_name="/ask")
    n = expected_count(nusc, first_sample, "car")
    assert text == str(n) and score == pytest.approx(0.9)
    assert len(grounded["boxes"]) == n and grounded["sample_token"] == first_sample
    assert {b["token"] for b in grounded["boxes"]} <= set(nusc.get("sample", first_sample)["anns"])


@pytest.mark.parametrize(
    ("question", "expect"),
    [("", "⚠ empty question"), ("   ", "⚠ empty question"), ("car? " * 2000, None), ("这里有几辆车？", "unknown"),
     ("Сколько машин?", "unknown"), ("x" * 20_001, "⚠ the question has 20001 characters")],
)  # fmt: skip
def test_bad_questions_get_an_answer_or_a_clear_message(client, app_server, first_sample, question, expect):
    text, _, _ = client.predict(first_sample, question, api_name="/ask")
    if expect is None:  # 10k characters: answered
        assert text == str(expected_count(app_server[1].browser.nusc, first_sample, "car"))
    else:
        assert text.startswith(expect)


@pytest.mark.parametrize("token", ["../../../../etc/passwd", "/etc/passwd", "v1.0-mini/scene.json", "", "%2e%2e/"])
def test_tokens_are_looked_up_never_opened(client, token):
    text, score, grounded = client.predict(token, "How many cars?", api_name="/ask")
    assert text.startswith("⚠ unknown sample token") and score == 0 and grounded["boxes"] == []


def test_twenty_concurrent_asks_are_all_answered(app_server, client_downloads):
    url, state = app_server
    tokens = [t for s in state.browser.scenes() for t in state.browser.samples(s["token"])]
    jobs = [(tokens[i % len(tokens)], ("How many pedestrians?", "How many cars?")[i % 2]) for i in range(20)]
    calls_before = state.qa.calls

    def one(job):
        return _client(url, client_downloads).predict(*job, api_name="/ask")[0]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, jobs))
    names = {"How many pedestrians?": "pedestrian", "How many cars?": "car"}
    assert answers == [str(expected_count(state.browser.nusc, t, names[q])) for t, q in jobs]
    assert state.qa.calls - calls_before == 20


def test_gradio_serves_nothing_outside_the_app_folder(app_server, tiny_root, first_sample):
    url, state = app_server
    # the path on the server (a file's record, not downloaded): a client that downloads returns where its copy went
    remote = gradio_client.Client(url, verbose=False, download_files=False)
    glb = remote.predict(state.browser.scenes()[0]["token"], 0, 1, "fused", 0.3, None, api_name="/show")[3]["path"]
    sd = state.browser.nusc.get("sample_data", state.browser.nusc.get("sample", first_sample)["data"]["CAM_FRONT"])
    targets = ["/etc/passwd", f"{tiny_root}/v1.0-mini/scene.json", f"{tiny_root}/{sd['filename']}",
               f"{state.tmp}/../../etc/passwd", "../../../etc/passwd", state.config.checkpoint, "pyproject.toml",
               os.path.abspath("pyproject.toml"), os.path.abspath("app.py")]  # fmt: skip
    for target in targets:
        for route in ("gradio_api/file=", "file="):
            assert _status(url + route + urllib.parse.quote(target)) in (403, 404, 400), (route, target)
    assert _status(url + "gradio_api/file=" + urllib.parse.quote(glb)) == 200  # its own outputs are served


def test_the_app_binds_localhost_and_explains_what_is_missing(tmp_path, tiny_root, app_cache):
    from fusion.app.chat import ask
    from fusion.app.server import create_app, parse_args
    from fusion.app.state import AppConfig

    config, host, port = parse_args([])
    assert (host, port) == ("127.0.0.1", 7860) and config.dataroot.endswith("data/synthetic")
    assert parse_args(["--qa-checkpoint", "q.ckpt", "--port", "9"])[0].qa_checkpoint == "q.ckpt"
    missing, _ = create_app(AppConfig(dataroot=str(tmp_path / "nothing"), run_dir=str(tmp_path)))
    assert "make run" in str(missing.config)
    app, state = create_app(AppConfig(dataroot=tiny_root, run_dir=str(tmp_path), cache_dir=app_cache))
    assert "make run" in str(app.config) and state.predictor is None  # no checkpoint: browses the data anyway
    token = state.browser.samples(state.browser.scenes()[0]["token"])[0]
    text, score, _ = ask(state, token, "How many cars?")
    assert text.startswith("⚠ No scene-QA checkpoint") and "make run" in text and score == 0


def test_run_metrics_and_pr_curves(app_server, app_run, tiny_root, tmp_path):
    import json
    from pathlib import Path

    from fusion.app.metrics import metric_rows, pr_curves
    from fusion.evaluation.evaluate import run_evaluation
    from fusion.evaluation.plots import render_all

    rows = metric_rows(app_run)
    m = json.loads((Path(app_run) / "fused" / "metrics.json").read_text())
    assert [r[:3] for r in rows] == [["fused", round(m["nuscenes"]["mean_ap"], 4), round(m["nuscenes"]["nd_score"], 4)]]
    curves = pr_curves(app_run, tiny_root, "v1.0-mini", app_server[1].tmp)  # no plots folder: rendered from results
    ev = run_evaluation(tiny_root, "v1.0-mini", "mini_val", str(Path(app_run) / "fused" / "results.json"))
    expected = sorted(p.stem[3:] for p in render_all(ev, tmp_path, samples=0) if p.stem.startswith("pr_"))
    assert sorted(c for _, c in curves) == expected and expected
    assert all(img.ndim == 3 and img.shape[2] == 3 for img, _ in curves)


def test_the_run_metrics_tab_reads_the_bootstrap_of_a_run(tmp_path):
    import json

    import numpy as np

    from fusion.app.metrics import difference_rows
    from fusion.evaluation.bootstrap import BootstrapAP
    from fusion.evaluation.config import DETECTION_NAMES
    from fusion.evaluation.report import bootstrap_summary

    assert difference_rows(tmp_path) == []  # no bootstrap.json: no table
    rng = np.random.default_rng(0)
    ap = {k: rng.random((11, len(DETECTION_NAMES))) for k in ("fused", "lidar_only", "camera_only")}
    summary = bootstrap_summary(BootstrapAP(ap, tuple(DETECTION_NAMES), 40, "bev", 0.7))
    (tmp_path / "bootstrap.json").write_text(json.dumps(summary))
    rows = difference_rows(tmp_path)
    car = summary["differences"]["fused-lidar_only"]["car"]
    pairs = ["fused − LiDAR-only", "LiDAR-only − camera-only"]
    assert [r[:2] for r in rows] == [[p, w] for p in pairs for w in ("car", "mean over classes")]
    assert rows[0][2:] == [
        round(car["difference"], 4),
        f"[{car['low']:+.4f}, {car['high']:+.4f}]",
        f"{car['ahead']:.0%}",
    ]
    summary["differences"]["fused-lidar_only"]["car"] = dict.fromkeys(("difference", "low", "high", "ahead")) | {
        "level": 0.95, "resamples": 0}  # fmt: skip
    (tmp_path / "bootstrap.json").write_text(json.dumps(summary))
    assert difference_rows(tmp_path)[0][2:] == ["—", "—", "—"]  # undefined: dashes, not an unreadable file
    (tmp_path / "bootstrap.json").write_text("{}")
    assert "bootstrap.json: unreadable (KeyError" in difference_rows(tmp_path)[0][0]


def test_a_failing_qa_model_gets_a_message_not_a_crash(app_server, first_sample):
    from types import SimpleNamespace

    from fusion.app.chat import ask

    class Broken:
        def answer(self, token, question):
            raise RuntimeError("shape mismatch")

    state = SimpleNamespace(browser=app_server[1].browser, qa=Broken(), qa_message="")
    text, score, grounded = ask(state, first_sample, "How many cars?")
    assert text == "⚠ the QA model could not answer: RuntimeError: shape mismatch" and score == 0
    assert grounded["boxes"] == []


def test_pr_curves_are_rendered_once_and_a_failure_is_a_message(app_run, tiny_root, tmp_path, monkeypatch):
    """The button renders a run's PR curves once (later clicks reuse them), and an evaluation that cannot run (here
    a dataroot that does not exist) comes back as a message naming the results file, not as an exception."""
    import importlib

    from fusion.app.metrics import pr_curves, pr_curves_or_message

    evaluate = importlib.import_module("fusion.evaluation.evaluate")  # the module (the package exports a function)

    first = pr_curves(app_run, tiny_root, "v1.0-mini", tmp_path)

    def evaluated_again(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(evaluate, "run_evaluation", evaluated_again)
    assert first and [c for _, c in pr_curves(app_run, tiny_root, "v1.0-mini", tmp_path)] == [c for _, c in first]
    monkeypatch.undo()
    pictures, message = pr_curves_or_message(app_run, str(tmp_path / "nowhere"), "v1.0-mini", tmp_path / "other")
    assert pictures is None and "results.json" in message and "nowhere" in message, message
