"""The app's `ask` with the real scene-QA model (`fusion.qa.api.SceneQA`, fresh weights): answers come back with a
score, grounded boxes are the sample's annotations, and bad questions get a message (catches drift between the
QA interface and the app)."""

from __future__ import annotations

from dataclasses import asdict

import torch


def test_ask_with_the_scene_qa_model(tiny_root, app_cache, tmp_path):
    from fusion.app.chat import WARNING, ask
    from fusion.app.state import AppConfig, AppState
    from fusion.models.model import TINY, build_model
    from fusion.qa.system import QASystem
    from fusion.qa.tokenizer import QuestionTokenizer, train_tokenizer

    torch.manual_seed(0)
    det_path, qa_path = tmp_path / "det.ckpt", tmp_path / "qa" / "last.ckpt"
    torch.save({"hyper_parameters": {"model": asdict(TINY)}, "datamodule_hyper_parameters": {"sweeps": 2},
                "state_dict": {f"model.{k}": v for k, v in build_model(TINY).model.state_dict().items()}},
               det_path)  # fmt: skip
    system = QASystem(detector_ckpt=str(det_path))
    corpus = ["how many cars are there", "is there a parked truck", "what is the status of the pedestrian"] * 20
    tokenizer = QuestionTokenizer(train_tokenizer(corpus, vocab_size=64), system.hparams.max_len)
    qa_path.parent.mkdir()
    torch.save({"hyper_parameters": dict(system.hparams), "state_dict": system.state_dict(),
                "qa_tokenizer": tokenizer.to_json()}, qa_path)  # fmt: skip
    state = AppState(AppConfig(dataroot=tiny_root, run_dir=str(tmp_path), cache_dir=app_cache))  # finds qa/last.ckpt
    assert state.qa is not None, state.qa_message
    token = state.browser.samples(state.browser.scenes()[1]["token"])[0]
    anns = set(state.browser.nusc.get("sample", token)["anns"])
    for question in ("How many cars are there?", "car " * 2500, "这里有几辆车？", "Is there a parked truck?"):
        text, score, grounded = ask(state, token, question)
        assert 0.0 <= score <= 1.0 and grounded["sample_token"] == token
        assert text and (not text.startswith(WARNING) or grounded["message"])
        assert {b["token"] for b in grounded["boxes"] if b["token"]} <= anns
    assert ask(state, token, "")[0].startswith(WARNING)
    assert ask(state, "../../etc/passwd", "How many cars?")[0].startswith(WARNING + "unknown sample token")
