"""Text to phoneme tokens with eSpeak NG (through phonemizer), batched and cached.

"Hello, world!" in en-us becomes the tokens

    h ə l ˈ oʊ , | w ˈ ɜː l d !

- phones as eSpeak segments them: "oʊ", "ɜː", "dʒ", "aɪɚ" are one token each;
- the stress marks ˈ (primary) and ˌ (secondary) are tokens of their own, before the phone
  they stress;
- punctuation marks are tokens of their own, and "..." is the one token "…";
- "|" separates words (it never starts or ends an utterance).

Text is normalized first (`normalize_text`: numbers, currency, symbols to words). Punctuation
is split off here rather than by phonemizer's `preserve_punctuation`, so that no mark is ever
confused with a character of eSpeak's own output (the en-gb-scotland voice writes "a:" for a
long a). Nothing touches eSpeak until the first text of a language is phonemized.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Sequence

from data.espeak import find_espeak
from data.normalize import normalize_text

if TYPE_CHECKING:
    from phonemizer.backend import EspeakBackend

logger = logging.getLogger(__name__)
# phonemizer's own messages; see _ConcisePhonemizerWarnings
_espeak_logger = logging.getLogger(f"{__name__}.espeak")

WORD_BOUNDARY = "|"
STRESS_MARKS = ("ˈ", "ˌ")
ELLIPSIS = "…"
PUNCTUATION = (",", ".", "!", "?", ";", ":", "¡", "¿", '"', "(", ")", "[", "]", "{", "}", ELLIPSIS)

# Below this many eSpeak lines in one call, starting worker processes costs more than it saves.
_MIN_LINES_PER_EXTRA_JOB = 4096


class UnsupportedLanguageError(ValueError):
    """eSpeak NG has no voice for the language."""


class _ConcisePhonemizerWarnings(logging.Filter):
    """Keep phonemizer's warnings to one short line each.

    It warns on word-count mismatches even in its 'ignore' mode ("U.S.A" is three words to
    eSpeak), and nothing here depends on word counts; its language-switch warning lists every
    line number of the batch, followed by two more lines that say the same.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(("words count mismatch", "extra phones may appear", "language switch flags")):
            return False
        if " containing language switches on lines " in message:
            count = message.split(" ", 1)[0]
            record.msg = ("%s utterances have words eSpeak read in another language; its language flags "
                          "were removed, so phones of that language may appear")
            record.args = (count,)
        return True


def is_phone_token(symbol: str) -> bool:
    """Whether an Echo text token is a sound: not a stress mark, word boundary, punctuation or special token."""
    special = symbol.startswith("<") and symbol.endswith(">") and len(symbol) > 2
    return not (special or symbol in STRESS_MARKS or symbol == WORD_BOUNDARY or symbol in PUNCTUATION)


@cache
def _configure_espeak() -> None:
    """Point phonemizer at the eSpeak NG library found by `find_espeak` (once, on first use)."""
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    install = find_espeak()
    # Environment as well as set_library: phonemizer's worker processes (njobs > 1) start a
    # fresh EspeakWrapper that only reads the environment.
    os.environ["PHONEMIZER_ESPEAK_LIBRARY"] = install.library
    if install.data is not None:
        os.environ["ESPEAK_DATA_PATH"] = install.data
    EspeakWrapper.set_library(install.library)
    _espeak_logger.addFilter(_ConcisePhonemizerWarnings())


@cache
def espeak_languages() -> dict[str, str]:
    """eSpeak NG's language codes and their names, e.g. {"en-us": "English (America)", ...}."""
    from phonemizer.backend import EspeakBackend

    _configure_espeak()
    return dict(sorted(EspeakBackend.supported_languages().items()))


def check_language(language: str) -> str:
    """Return eSpeak's code for `language` (codes are lower case), or raise UnsupportedLanguageError."""
    languages = espeak_languages()
    code = language.strip().lower()
    if code in languages:
        return code
    close = difflib.get_close_matches(code, list(languages), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise UnsupportedLanguageError(
        f"eSpeak NG has no voice for language {language!r}{hint}; it knows {len(languages)} "
        "languages, listed by data.phonemes.espeak_languages(). For a language without a voice, "
        f'build a sentencepiece front-end instead: TextFrontend.build(texts, languages="{language}", '
        'kind="bpe")'
    )


def _create_backend(code: str, with_stress: bool) -> EspeakBackend:
    from phonemizer.backend import EspeakBackend

    _configure_espeak()
    return EspeakBackend(
        code,
        preserve_punctuation=False,  # punctuation is split off before eSpeak sees the text
        with_stress=with_stress,
        language_switch="remove-flags",
        words_mismatch="ignore",
        logger=_espeak_logger,
    )


# ---------------------------------------------------------------------------------------------
# Splitting punctuation off the text, and eSpeak's output into tokens

# "." "," ":" between two letters or digits of an alphabet that spaces its words ("U.S.A", "3.5",
# "10:30", "т.е.") belong to the word; elsewhere, and always in Chinese or Japanese, they are marks.
_WORD_CHAR = "0-9A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"
_TEXT_MARK_RE = re.compile(rf"\.\.\.|[!?;¡¿\"()\[\]{{}}]|(?<![{_WORD_CHAR}])[.,:]|[.,:](?![{_WORD_CHAR}])")
_PHONE_RE = re.compile(f"[{''.join(STRESS_MARKS)}]|[^{''.join(STRESS_MARKS)}]+")


@dataclass
class _Chunk:
    """A run of words without punctuation inside, and the marks around it."""

    words: str
    leading: list[str] = field(default_factory=list)  # opening marks: ( " ¿
    trailing: list[str] = field(default_factory=list)  # closing marks: , . ! ) "


def _has_speech(span: str) -> bool:
    return any(ch.isalnum() for ch in span)


def _split_punctuation(text: str) -> list[_Chunk]:
    """'He said "hi," then left.' -> [He said] ["hi,] [then left.], marks attached to words.

    A mark with a space before it and none after it opens the next chunk; any other mark
    closes the previous one.
    """
    chunks: list[_Chunk] = []
    pending: list[str] = []
    position = 0
    for match in _TEXT_MARK_RE.finditer(text):
        words = text[position : match.start()]
        if _has_speech(words):
            chunks.append(_Chunk(words.strip(), pending))
            pending = []
        position = match.end()
        mark = ELLIPSIS if match.group() == "..." else match.group()
        spaced_before = match.start() == 0 or text[match.start() - 1].isspace()
        joined_after = match.end() < len(text) and not text[match.end()].isspace()
        if not chunks or pending or (spaced_before and joined_after):
            pending.append(mark)
        else:
            chunks[-1].trailing.append(mark)
    if _has_speech(text[position:]):
        chunks.append(_Chunk(text[position:].strip(), pending))
    elif chunks:
        chunks[-1].trailing.extend(pending)
    return chunks


def _espeak_tokens(phonemized: str) -> list[str]:
    """'h ə l ˈoʊ | w ˈɜː l d' -> [h, ə, l, ˈ, oʊ, |, w, ˈ, ɜː, l, d]."""
    tokens: list[str] = []
    for piece in phonemized.split():
        if piece == WORD_BOUNDARY:
            tokens.append(piece)
        else:
            tokens.extend(_PHONE_RE.findall(piece))
    return tokens


def _assemble(chunks: list[_Chunk], phonemized: list[str]) -> list[str]:
    tokens: list[str] = []
    for chunk, phones in zip(chunks, phonemized, strict=True):
        tokens.append(WORD_BOUNDARY)
        tokens.extend(chunk.leading)
        tokens.extend(_espeak_tokens(phones))
        tokens.extend(chunk.trailing)
    # A chunk eSpeak had nothing to say for can leave boundaries doubled or at the ends.
    tidy = [t for i, t in enumerate(tokens) if t != WORD_BOUNDARY or (i > 0 and tokens[i - 1] != t)]
    while tidy and tidy[0] == WORD_BOUNDARY:
        tidy.pop(0)
    while tidy and tidy[-1] == WORD_BOUNDARY:
        tidy.pop()
    return tidy


# ---------------------------------------------------------------------------------------------


class Phonemizer:
    """Phoneme tokens for texts in any eSpeak NG language, one eSpeak backend per language.

    Backends are created on first use. Results are cached in memory by (normalized text,
    language), so a text is sent to eSpeak once; `backend_calls` counts the calls to eSpeak
    (one per `phonemize` call that had anything new) and `backend_lines` the lines sent.

    `njobs` > 1 lets phonemizer spread very large batches over worker processes.
    `max_cache_entries` bounds the cache (oldest entries are dropped first); None = unbounded.
    """

    def __init__(self, *, with_stress: bool = True, njobs: int = 1,
                 max_cache_entries: int | None = 1_000_000) -> None:
        if njobs < 1:
            raise ValueError(f"njobs must be >= 1, got {njobs}")
        if max_cache_entries is not None and max_cache_entries < 0:
            raise ValueError(f"max_cache_entries must be >= 0 or None, got {max_cache_entries}")
        self.with_stress = with_stress
        self.njobs = njobs
        self.max_cache_entries = max_cache_entries
        self.backend_calls = 0
        self.backend_lines = 0
        self._backends: dict[str, EspeakBackend] = {}
        self._cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def phonemize(self, texts: Sequence[str], language: str = "en-us") -> list[list[str]]:
        """Phoneme tokens for each text (see the module docstring for the token stream).

        Raises EmptyTextError (a ValueError) for a text with nothing to speak, and
        UnsupportedLanguageError (a ValueError) for a language eSpeak NG has no voice for.
        """
        if isinstance(texts, str):
            raise TypeError("phonemize takes a list of texts; wrap a single text as [text]")
        code = check_language(language)
        keys = [(normalize_text(text, language), code) for text in texts]
        found = {key: self._cache[key] for key in keys if key in self._cache}
        missing = [key[0] for key in dict.fromkeys(keys) if key not in found]
        if missing:
            for text, tokens in zip(missing, self._phonemize_uncached(missing, code), strict=True):
                found[(text, code)] = tokens
                self._remember((text, code), tokens)
        return [list(found[key]) for key in keys]

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def _phonemize_uncached(self, texts: list[str], code: str) -> list[tuple[str, ...]]:
        """One eSpeak call for all chunks of all `texts` (normalized, distinct)."""
        from phonemizer.separator import Separator

        chunked = [_split_punctuation(text) for text in texts]
        lines = [chunk.words for chunks in chunked for chunk in chunks]
        backend = self._backends.get(code)
        if backend is None:
            backend = self._backends[code] = _create_backend(code, self.with_stress)
        njobs = max(1, min(self.njobs, len(lines) // _MIN_LINES_PER_EXTRA_JOB))
        phonemized = backend.phonemize(
            lines, separator=Separator(phone=" ", word=f" {WORD_BOUNDARY} "), strip=True, njobs=njobs
        )
        self.backend_calls += 1
        self.backend_lines += len(lines)
        if len(phonemized) != len(lines):  # phonemizer drops nothing when punctuation is off
            raise RuntimeError(f"eSpeak returned {len(phonemized)} lines for {len(lines)}")
        results = []
        start = 0
        for text, chunks in zip(texts, chunked, strict=True):
            tokens = _assemble(chunks, phonemized[start : start + len(chunks)])
            start += len(chunks)
            if not any(t not in PUNCTUATION and t != WORD_BOUNDARY for t in tokens):
                raise ValueError(f"eSpeak NG ({code}) produced no phonemes for {text!r}")
            results.append(tuple(tokens))
        return results

    def _remember(self, key: tuple[str, str], tokens: tuple[str, ...]) -> None:
        if self.max_cache_entries == 0:
            return
        self._cache[key] = tokens
        if self.max_cache_entries is not None and len(self._cache) > self.max_cache_entries:
            del self._cache[next(iter(self._cache))]  # dicts keep insertion order: oldest first
