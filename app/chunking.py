"""Split long text into chunks the models can speak, each with the pause that follows it.

The language models were trained on utterances of a sentence or two, so a paragraph is
spoken sentence by sentence (in one batch, with the same voice) and the pieces are joined
with silences whose length follows the punctuation:

    split_text("Hello there. How are you?\n\nFine.")
    -> [Chunk("Hello there. How are you?", 0.6), Chunk("Fine.", 0.0)]

- sentences end at . ! ? … (and closing quotes or brackets) followed by a space and a word
  that does not start in lower case; "Dr.", "e.g.", "J." and the like do not end one;
- a sentence shorter than `min_chars` joins the next one of its paragraph ("Hi. I'm Ann.");
- a sentence longer than `max_chars` is cut at commas, semicolons, colons and dashes, and a
  clause still too long at spaces;
- pauses: `SENTENCE_PAUSE` after a sentence, `PARAGRAPH_PAUSE` at a blank line,
  `CLAUSE_PAUSE` at a cut inside a sentence, `WORD_PAUSE` at a cut between words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_PAUSE = 0.3  # seconds
PARAGRAPH_PAUSE = 0.6
CLAUSE_PAUSE = 0.15
WORD_PAUSE = 0.05
MAX_CHARS = 200  # about 13 s of speech: inside the lengths the models were trained on
MIN_CHARS = 20

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc eg ie e.g i.e no fig approx dept est inc ltd co mt ave rd "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+)")
_CLAUSE_END = re.compile(r"[,;:]+[\"'”’)\]]*\s+|\s+[—–-]+\s+")


@dataclass(frozen=True)
class Chunk:
    text: str
    pause: float  # seconds of silence after this chunk (0 after the last)


def split_text(text: str, max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> list[Chunk]:
    """Chunks of at most `max_chars` characters (see the module docstring); [] for blank text."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    chunks: list[Chunk] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        sentences = _merge_short(split_sentences(paragraph), min_chars, max_chars)
        for sentence in sentences:
            chunks.extend(_split_long(sentence, max_chars))
        if chunks:
            chunks[-1] = Chunk(chunks[-1].text, PARAGRAPH_PAUSE)
    if chunks:
        chunks[-1] = Chunk(chunks[-1].text, 0.0)
    return chunks


def split_sentences(text: str) -> list[str]:
    """The sentences of one paragraph, punctuation kept."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        following = text[end:].lstrip()
        if not following or following[0].islower():
            continue
        word = text[start : match.start()].rsplit(None, 1)[-1] if text[start : match.start()].strip() else ""
        word = word.lstrip("\"'“‘([").lower()
        if match.group().startswith(".") and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        sentences.append(text[start:end].strip())
        start = end
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def _merge_short(sentences: list[str], min_chars: int, max_chars: int) -> list[str]:
    merged: list[str] = []
    for sentence in sentences:
        if merged and len(merged[-1]) < min_chars and len(merged[-1]) + 1 + len(sentence) <= max_chars:
            merged[-1] = f"{merged[-1]} {sentence}"
        else:
            merged.append(sentence)
    if len(merged) > 1 and len(merged[-1]) < min_chars and len(merged[-2]) + 1 + len(merged[-1]) <= max_chars:
        merged[-2:] = [f"{merged[-2]} {merged[-1]}"]
    return merged


def _split_long(sentence: str, max_chars: int) -> list[Chunk]:
    """One sentence -> chunks of at most max_chars, cut at clauses, then at words."""
    if len(sentence) <= max_chars:
        return [Chunk(sentence, SENTENCE_PAUSE)]
    clauses, start = [], 0
    for match in _CLAUSE_END.finditer(sentence):
        clauses.append(sentence[start : match.end()].strip())
        start = match.end()
    clauses.append(sentence[start:].strip())
    pieces: list[tuple[str, float]] = []
    for clause in clauses:
        if len(clause) <= max_chars:
            pieces.append((clause, CLAUSE_PAUSE))
        else:
            pieces.extend((words, WORD_PAUSE) for words in _pack(clause.split(), max_chars))
            pieces[-1] = (pieces[-1][0], CLAUSE_PAUSE)
    # Pack neighbouring pieces back together while they fit.
    chunks: list[Chunk] = []
    for piece, pause in pieces:
        if chunks and len(chunks[-1].text) + 1 + len(piece) <= max_chars:
            chunks[-1] = Chunk(f"{chunks[-1].text} {piece}", pause)
        else:
            chunks.append(Chunk(piece, pause))
    chunks[-1] = Chunk(chunks[-1].text, SENTENCE_PAUSE)
    return chunks


def _pack(words: list[str], max_chars: int) -> list[str]:
    """Words -> lines of at most max_chars (a longer word stands alone)."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines
