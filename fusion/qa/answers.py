"""The answer vocabulary: fixed by the question generator's grammar, so the model's size never depends on the data.

yes / no, counts 0..MAX_COUNT, the ten class names, the statuses, and `OBJECT` — the answer class of a grounding
question (the answer is then the grounded object, not a word).
"""

from __future__ import annotations

from fusion.data.qa import NAMES, STATUS

MAX_COUNT = 30
OBJECT = "<object>"
ANSWERS = ("yes", "no", *(str(i) for i in range(MAX_COUNT + 1)), *NAMES.values(),
           *dict.fromkeys(STATUS.values()), OBJECT)  # fmt: skip
ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}
COUNTS = tuple(ANSWER_INDEX[str(i)] for i in range(MAX_COUNT + 1))


def answer_index(record: dict) -> int:
    """The answer class of a question record; -1 when the answer is outside the vocabulary (a count > MAX_COUNT)."""
    if record["type"] == "grounding":
        return ANSWER_INDEX[OBJECT]
    return ANSWER_INDEX.get(record["answer"], -1)
