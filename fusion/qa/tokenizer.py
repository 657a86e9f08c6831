"""Question tokenizer: a WordPiece vocabulary trained offline with `tokenizers` on the generated question corpus.

BERT-style normalisation (lower case, accents stripped, punctuation split), special tokens [PAD] [UNK] [CLS] [SEP]
[MASK] at ids 0-4. Any text encodes: unknown words fall back to word pieces or [UNK], long text is cut to
`max_chars` characters before tokenising and to `max_len` tokens after. Saved as a `tokenizer.json`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIALS))


def train_tokenizer(corpus: list[str], vocab_size: int = 512) -> Tokenizer:
    """A WordPiece tokenizer of at most `vocab_size` entries learnt from the questions."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=32))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), min_frequency=1,
                                        show_progress=False)  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    for i, name in enumerate(SPECIALS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"tokenizer: special token {name} got id {tok.token_to_id(name)}, expected {i}")
    return tok


class QuestionTokenizer:
    """Questions -> ids <int64: B, T> and mask <bool: B, T> (T <= max_len), and the count of [UNK] tokens per row."""

    def __init__(self, tokenizer: Tokenizer, max_len: int = 48, max_chars: int = 1000):
        self.tokenizer, self.max_len, self.max_chars = tokenizer, max_len, max_chars

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def rows(self, questions: list[str]) -> list[list[int]]:
        """Each question's ids, unpadded (at most max_len)."""
        return [e.ids[: self.max_len] for e in self.tokenizer.encode_batch([q[: self.max_chars] for q in questions])]

    def encode(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pad(self.rows(questions))

    @staticmethod
    def pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`encode`'s tensors from `rows`' ids."""
        t = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), max(t, 1)), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = ids != PAD
        return ids, mask, (ids == UNK).sum(1)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str, max_len: int = 48) -> QuestionTokenizer:
        return cls(Tokenizer.from_str(text), max_len)

    def save(self, path: str | os.PathLike) -> None:
        from fusion.data.io import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike, max_len: int = 48) -> QuestionTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer file is missing")
        return cls.from_json(path.read_text(), max_len)
