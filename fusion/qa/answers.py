"""The answer vocabulary: fixed by the question generator's grammar, so the model's size never depends on the data.

yes / no, counts 0..MAX_COUNT, the ten class names, the statuses, and `OBJECT` — the answer class of a grounding
question (the answer is then the grounded object, not a word).
"""

from __future__ import annotations

from fusion.data.qa import NAMES, STATUS
from fusion.data.synth.catalog import COLOURS

MAX_COUNT = 30
OBJECT = "<object>"
ANSWERS = ("yes", "no", *(str(i) for i in range(MAX_COUNT + 1)), *NAMES.values(),
           *dict.fromkeys(STATUS.values()), OBJECT)  # fmt: skip
ANSWER_INDEX = {a: i for i, a in enumerate(ANSWERS)}
COUNTS = tuple(ANSWER_INDEX[str(i)] for i in range(MAX_COUNT + 1))

# What each object is, as the per-object attribute head reads it: its class and status (in the answer vocabulary's
# order, so that an object / status question can be answered by the object the grounding points at) and its colour.
CLASS_WORDS = tuple(NAMES.values())
STATUS_WORDS = tuple(dict.fromkeys(STATUS.values()))
COLOUR_WORDS = tuple(COLOURS)
CLASS_ANSWERS = tuple(ANSWER_INDEX[w] for w in CLASS_WORDS)
STATUS_ANSWERS = tuple(ANSWER_INDEX[w] for w in STATUS_WORDS)
ATTRIBUTE_SIZES = (len(CLASS_WORDS), len(STATUS_WORDS), len(COLOUR_WORDS))  # class, status, colour


def answer_index(record: dict) -> int:
    """The answer class of a question record; -1 when the answer is outside the vocabulary (a count > MAX_COUNT)."""
    if record["type"] == "grounding":
        return ANSWER_INDEX[OBJECT]
    return ANSWER_INDEX.get(record["answer"], -1)
