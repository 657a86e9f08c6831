"""The question tokenizer: trained WordPiece, specials at fixed ids, any text encodes (UNK, truncation)."""

from __future__ import annotations

import pytest

from fusion.qa.tokenizer import CLS, MASK, PAD, SPECIALS, UNK, QuestionTokenizer, train_tokenizer

CORPUS = ["How many cars are there?", "Is there any red car to the left of the ego car?",
          "What is the parked truck doing?", "Find the moving pedestrian."] * 5  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return QuestionTokenizer(train_tokenizer(CORPUS, 200), max_len=16)


def test_specials_have_fixed_ids(tok):
    assert [tok.tokenizer.token_to_id(s) for s in SPECIALS] == [PAD, UNK, CLS, 3, MASK]


def test_known_words_are_whole_tokens_and_case_is_folded(tok):
    ids, mask, unk = tok.encode(["How many CARS are there?"])
    words = [tok.tokenizer.id_to_token(int(i)) for i in ids[0][mask[0]]]
    assert words == ["how", "many", "cars", "are", "there", "?"]
    assert int(unk[0]) == 0


def test_batch_padding_matches_single_encodes(tok):
    qs = ["How many cars are there?", "Find the moving pedestrian."]
    ids, mask, _ = tok.encode(qs)
    for i, q in enumerate(qs):
        one, one_mask, _ = tok.encode([q])
        assert ids[i][mask[i]].tolist() == one[0][one_mask[0]].tolist()
        assert (ids[i][~mask[i]] == PAD).all()


@pytest.mark.parametrize("text", ["", "   ", "x" * 10_000, "车有几辆？", "🚗 🚕 🚙", "carz?? wat", "\x00\x07\n\t"])
def test_any_text_encodes_within_max_len(tok, text):
    ids, mask, unk = tok.encode([text])
    assert ids.shape[0] == 1 and ids.shape[1] <= tok.max_len
    assert int(mask.sum()) <= tok.max_len
    assert 0 <= int(unk[0]) <= int(mask.sum())


def test_unknown_script_becomes_unk(tok):
    _, _, unk = tok.encode(["车有几辆"])
    assert int(unk[0]) >= 1


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    again = QuestionTokenizer.load(tmp_path / "tokenizer.json", max_len=16)
    q = ["Is there any red car to the left of the ego car?"]
    assert again.encode(q)[0].tolist() == tok.encode(q)[0].tolist()
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        QuestionTokenizer.load(tmp_path / "missing.json")
