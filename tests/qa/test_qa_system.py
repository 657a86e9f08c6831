"""QASystem end to end on the tiny world: overfitting a handful of questions, `fusion fit` with a QA config
(qa_metrics.json beside the checkpoint), and the app's API on any question text."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from fusion.qa.answers import ANSWERS
from fusion.qa.dataset import QACollate

QA_TINY = str(Path(__file__).resolve().parents[2] / "configs" / "qa_tiny.yaml")


def _handful(qa_dm, n_per_type: int = 2) -> list[dict]:
    ds, picked, seen = qa_dm.datasets["mini_train"], [], {}
    for i in range(len(ds)):
        item = ds[i]
        t = item["record"]["type"]
        if seen.get(t, 0) < n_per_type and (t != "grounding" or item["record"]["refs"][0] in item["gt_tokens"]):
            picked.append(item)
            seen[t] = seen.get(t, 0) + 1
    return picked


def test_overfits_a_handful_of_questions(qa_dm, tiny_det_ckpt):
    from fusion.qa.system import QASystem

    torch.manual_seed(0)
    items = _handful(qa_dm)
    assert {it["record"]["type"] for it in items} >= {"exist", "count", "object", "status", "grounding"}
    b = QACollate(qa_dm.tokenizer)(items)
    system = QASystem(detector_ckpt=tiny_det_ckpt, mlm=True, mom=True, stm=True)
    system.log = system.log_dict = lambda *a, **k: None
    opt = torch.optim.Adam([p for p in system.model.parameters() if p.requires_grad], lr=3e-3)
    has, g = b.answer >= 0, b.ground_target >= 0
    for step in range(400):
        loss = system.training_step(b, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            with torch.no_grad():
                out = system.model(b.ids, b.text_mask, b.features, b.boxes, b.object_mask)
            answers_right = torch.equal(out.answer.argmax(-1)[has], b.answer[has])
            if answers_right and torch.equal(out.ground.argmax(-1)[g], b.ground_target[g]):
                break
    system.eval()
    with torch.no_grad():
        out = system.model(b.ids, b.text_mask, b.features, b.boxes, b.object_mask)
    assert torch.equal(out.answer.argmax(-1)[has], b.answer[has]), "every answer right"
    assert g.any() and torch.equal(out.ground.argmax(-1)[g], b.ground_target[g]), "every grounding right"


@pytest.fixture(scope="module")
def fitted(tiny_root, tiny_det_ckpt, tmp_path_factory, monkeypatch_module):
    """`fusion fit --config` with a copy of configs/qa_tiny.yaml whose paths point into a temporary folder."""
    import yaml

    from fusion.cli import main

    work = tmp_path_factory.mktemp("qa_fit")
    monkeypatch_module.setenv("FUSION_CACHE_DIR", str(work / "cache"))
    cfg = yaml.safe_load(Path(QA_TINY).read_text())
    cfg["trainer"]["default_root_dir"] = str(work)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(work / "logs")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(work / "ckpt")
    cfg["data"]["init_args"].update(dataroot=tiny_root, train_split="mini_train", val_split="mini_val",
                                    detector_ckpt=tiny_det_ckpt, questions_dir=str(work / "questions"))  # fmt: skip
    (work / "qa.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(work / "qa.yaml")]) == 0
    return work / "ckpt"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_fit_writes_qa_metrics_beside_the_checkpoint(fitted):
    metrics = json.loads((fitted / "qa_metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "prior", "grounding"}
    assert list(metrics["accuracy"]) == list(metrics["prior"]) and metrics["accuracy"]["overall"] >= 0
    for t in metrics["accuracy"]:
        assert t in ("overall", "exist", "count", "object", "status", "comparison")
        assert 0.0 <= metrics["accuracy"][t] <= 1.0 and 0.0 <= metrics["prior"][t] <= 1.0
    assert set(metrics["grounding"]) == {"acc@0.25", "acc@0.5"}
    assert metrics["grounding"]["acc@0.25"] >= metrics["grounding"]["acc@0.5"]
    assert (fitted / "tokenizer.json").exists() and (fitted / "qa.ckpt").exists()


QUESTIONS = ["How many cars are there?", "Find the parked car.", "Is there any moving pedestrian?", "",
             "   ", "wat iz teh colr of teh bus??", "x" * 10_000, "车有几辆？", "Как дела?", "🚗" * 300,
             "What is the meaning of life?", "\x00\x01"]  # fmt: skip


def test_scene_qa_answers_any_question(fitted, tiny_root):
    from fusion.qa.api import Answer, GroundedBox, SceneQA, answer

    qa = SceneQA.from_checkpoint(str(fitted / "qa.ckpt"), tiny_root, "v1.0-mini")
    token = next(iter(qa.source.where))
    for q in QUESTIONS:
        a = answer(token, q, qa)
        assert isinstance(a, Answer) and 0.0 <= a.score <= 1.0
        assert all(isinstance(b, GroundedBox) and len(b.center) == 3 and len(b.size) == 3 for b in a.boxes)
        if not q.strip():
            assert a.score == 0.0 and a.text == "" and a.message
        else:
            assert a.text in ANSWERS or a.text.startswith("the ")
    long = qa.answer(token, "x" * 10_000)
    assert "truncated" in long.message
    assert "unknown" in qa.answer(token, "车有几辆？").message
    with pytest.raises(ValueError, match="nope"):
        qa.answer("nope", "How many cars are there?")


def test_scene_qa_is_thread_safe_and_deterministic(fitted, tiny_root):
    from fusion.qa.api import SceneQA

    qa = SceneQA.from_checkpoint(str(fitted / "qa.ckpt"), tiny_root, "v1.0-mini")
    tokens = list(qa.source.where)[:3]
    jobs = [(t, q) for t in tokens for q in QUESTIONS[:3]]
    serial = {job: qa.answer(*job) for job in jobs}
    qa._objects.clear()
    results, errors = {}, []

    def work(job):
        try:
            results[job] = qa.answer(*job)
        except Exception as e:  # collected and reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs * 2]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for job in jobs:
        assert results[job].text == serial[job].text and abs(results[job].score - serial[job].score) < 1e-5


def test_grounded_boxes_are_in_the_global_frame(fitted, tiny_root, tiny_nusc):
    from fusion.qa.api import SceneQA

    qa = SceneQA.from_checkpoint(str(fitted / "qa.ckpt"), tiny_root, "v1.0-mini")
    token = next(iter(qa.source.where))
    for q in ("Find the car.", "How many cars are there?", "Find the pedestrian."):
        for box in qa.answer(token, q).boxes:
            if box.token is None:
                continue
            ann = tiny_nusc.get("sample_annotation", box.token)  # the devkit's global-frame record
            assert max(abs(a - b) for a, b in zip(box.center, ann["translation"], strict=True)) < 1e-3
            assert max(abs(a - b) for a, b in zip(box.size, ann["size"], strict=True)) < 1e-3


def test_a_scene_without_objects_still_answers(fitted):
    from fusion.qa.objects import SceneObjects
    from fusion.qa.system import QASystem

    system = QASystem.load(str(fitted / "qa.ckpt"))
    f = system.model.objects.feature_dim
    empty = SceneObjects(torch.zeros(0, 7), torch.zeros(0, f), torch.zeros(0, dtype=torch.long), torch.zeros(0), ())
    for q in ("How many cars are there?", "Find the red car.", ""):
        pred = system.answer_one(empty, q)
        assert pred.boxes == [] and "no objects" in pred.message and 0.0 <= pred.score <= 1.0


def test_a_checkpoint_of_another_model_version_names_the_file_and_field(fitted, tmp_path):
    from fusion.qa.system import QASystem

    state = torch.load(fitted / "qa.ckpt", map_location="cpu", weights_only=True)
    state["state_dict"]["model.ground_head.0.weight"] = torch.zeros(3, 3)  # a head of an older model version
    path = tmp_path / "old.ckpt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"old\.ckpt: field 'state_dict' does not fit.*ground_head"):
        QASystem.load(str(path))


def test_validation_under_ddp_counts_every_question_once_and_test_runs(fitted, tmp_path):
    """`fusion validate` of the QA checkpoint on two CPU processes (gloo) logs the single-process figures: each
    rank's questions are gathered and the sampler's padding repeats are counted once. `fusion test` logs the same
    figures as test/... (the QA data module tests on its validation questions)."""
    import csv
    import os
    import subprocess
    import sys

    import yaml

    from fusion.cli import main

    cfg = yaml.safe_load((fitted.parent / "qa.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(tmp_path / "ckpt")  # keep the fit's metrics file
    cfg["trainer"]["callbacks"][0]["init_args"].pop("filename", None)
    config = tmp_path / "qa.yaml"

    def logged(run: str, key: str) -> dict[str, float]:
        rows = [r for f in sorted((tmp_path / run).rglob("metrics.csv")) for r in csv.DictReader(f.open())]
        return {k: float(v) for r in rows for k, v in r.items() if k.startswith(key) and v}

    runs = {}
    for run, extra in (("single", []), ("ddp", ["--trainer.strategy", "ddp", "--trainer.devices", "2"])):
        cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / run)
        config.write_text(yaml.safe_dump(cfg))
        args = ["validate", "--config", str(config), "--ckpt_path", str(fitted / "qa.ckpt"), *extra]
        if run == "single":
            assert main(args) == 0
        else:
            fusion = str(Path(sys.executable).with_name("fusion"))
            done = subprocess.run([fusion, *args, "--trainer.accelerator", "cpu"], capture_output=True, text=True,
                                  env=dict(os.environ), timeout=600)  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
        runs[run] = logged(run, "val/")
    assert runs["single"] and "val/acc" in runs["single"]
    assert runs["ddp"] == pytest.approx(runs["single"], abs=1e-9)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "test")
    config.write_text(yaml.safe_dump(cfg))
    assert main(["test", "--config", str(config), "--ckpt_path", str(fitted / "qa.ckpt")]) == 0
    tested = {k.replace("test/", "val/"): v for k, v in logged("test", "test/").items()}
    assert tested == pytest.approx(runs["single"], abs=1e-9)
