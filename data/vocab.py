"""The text vocabulary: token symbols <-> ids, saved with every model that reads text.

Ids are laid out as

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   then one tag per language ("<en-us>"; build() sorts them)
    then the symbols: phonemes, stress marks, punctuation and "|" (kind "phoneme"),
    or sentencepiece pieces (kind "bpe").

The JSON file is meant to be read by people too: one symbol per line, in id order.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from data.phonemes import PUNCTUATION, STRESS_MARKS, WORD_BOUNDARY, Phonemizer
from data.pretrained import write_file

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
KINDS = ("phoneme", "bpe")
FILE_FORMAT = "echo-text-vocabulary"
FORMAT_VERSION = 1


class VocabularyFileError(ValueError):
    """A vocabulary file that cannot be read: not JSON, another format, or inconsistent."""


def language_tag(language: str) -> str:
    """The token that marks a text's language: "en-us" -> "<en-us>"."""
    return f"<{language}>"


class Vocabulary:
    """Symbol <-> id map with reserved ids first (see the module docstring).

    `encode` never fails on an unknown symbol: it maps it to <unk>, counts it in
    `unknown_counts` and logs a warning the first time it sees it.
    """

    def __init__(self, symbols: Iterable[str], languages: Iterable[str] = (),
                 kind: str = "phoneme") -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.languages = (languages,) if isinstance(languages, str) else tuple(languages)
        self.symbols = tuple(symbols)
        for language in self.languages:
            if not isinstance(language, str) or not language.strip() or any(c in language for c in "<> "):
                raise ValueError(f"invalid language code {language!r}: use eSpeak-style codes like 'en-us'")
        reserved = set(SPECIAL_TOKENS) | {language_tag(language) for language in self.languages}
        for symbol in self.symbols:
            if not isinstance(symbol, str) or not symbol:
                raise ValueError(f"vocabulary symbols must be non-empty strings, got {symbol!r}")
            if symbol in reserved:
                raise ValueError(f"symbol {symbol!r} collides with a reserved token")
        self._id_to_token = [*SPECIAL_TOKENS, *map(language_tag, self.languages), *self.symbols]
        self._token_to_id = {token: i for i, token in enumerate(self._id_to_token)}
        if len(self._token_to_id) != len(self._id_to_token):
            duplicates = [t for t, n in Counter(self._id_to_token).items() if n > 1]
            raise ValueError(f"duplicate languages or symbols in the vocabulary: {duplicates}")
        self.unknown_counts: Counter[str] = Counter()

    # -- ids ----------------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self._id_to_token)

    def __contains__(self, token: object) -> bool:
        return token in self._token_to_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._id_to_token == other._id_to_token and self.kind == other.kind

    def __repr__(self) -> str:
        return (f"Vocabulary(kind={self.kind!r}, size={len(self)}, languages={list(self.languages)}, "
                f"symbols={len(self.symbols)})")

    def language_id(self, language: str) -> int:
        """The id of `language`'s tag; a clear error for a language the vocabulary lacks."""
        token_id = self._token_to_id.get(language_tag(language))
        if token_id is None:
            raise ValueError(
                f"language {language!r} is not in this vocabulary (it has: "
                f"{', '.join(self.languages) or 'none'}); rebuild the vocabulary with this language included"
            )
        return token_id

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids for `tokens`; unknown symbols become <unk> and are counted in `unknown_counts`."""
        ids = []
        for token in tokens:
            token_id = self._token_to_id.get(token)
            if token_id is None:
                if token not in self.unknown_counts:
                    logger.warning("symbol %r is not in the %s vocabulary: encoded as <unk>",
                                   token, self.kind)
                self.unknown_counts[token] += 1
                token_id = self.unk_id
            ids.append(token_id)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        tokens = []
        for token_id in ids:
            if not 0 <= token_id < len(self._id_to_token):
                raise ValueError(f"id {token_id} is outside the vocabulary (size {len(self)})")
            tokens.append(self._id_to_token[token_id])
        return tokens

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], languages: Iterable[str], *,
              kind: str = "phoneme", min_count: int = 1) -> Vocabulary:
        """A vocabulary of every symbol seen at least `min_count` times, sorted (deterministic)."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        symbols = sorted(symbol for symbol, n in counts.items() if n >= min_count)
        if not symbols:
            raise ValueError(f"no symbol occurs {min_count} times or more: the corpus is empty "
                             "or min_count too high")
        languages = [languages] if isinstance(languages, str) else languages
        return cls(symbols, sorted(set(languages)), kind)

    @classmethod
    def from_inventory(cls, language: str = "en-us", phonemizer: Phonemizer | None = None) -> Vocabulary:
        """Every phoneme of an English variant (en-us, en-gb, en-gb-scotland, ...), with stress
        marks, punctuation and the word boundary, found by phonemizing a built-in word list.

        Other languages have no built-in inventory: build the vocabulary from a corpus.
        """
        code = language.strip().lower()
        if code.split("-")[0] != "en" or code == "en-shaw":
            raise ValueError(
                f"there is no built-in phoneme inventory for {language!r} (only for English voices such "
                f"as 'en-us' and 'en-gb'); build the vocabulary from your corpus instead: "
                f'TextFrontend.build(texts, languages="{language}") or '
                f'Vocabulary.build(phoneme_lists, ["{language}"])'
            )
        phonemizer = phonemizer or Phonemizer()
        lines = [line for line in _ENGLISH_INVENTORY_WORDS.splitlines() if line.strip()]
        symbols = {token for tokens in phonemizer.phonemize(lines, language) for token in tokens}
        symbols.update(PUNCTUATION, [WORD_BOUNDARY])
        if phonemizer.with_stress:
            symbols.update(STRESS_MARKS)
        return cls(sorted(symbols), [language], "phoneme")

    # -- files --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "size": len(self),
            "special_tokens": list(SPECIAL_TOKENS),
            "languages": list(self.languages),
            "symbols": list(self.symbols),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "the vocabulary") -> Vocabulary:
        def fail(why: str) -> VocabularyFileError:
            return VocabularyFileError(f"{source} is not a usable Echo text vocabulary: {why}")

        if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
            raise fail(f'expected a JSON object with "format": "{FILE_FORMAT}"')
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise fail(f"format_version {version!r} is not supported (this Echo reads <= {FORMAT_VERSION}); "
                       "upgrade Echo")
        if data.get("special_tokens") != list(SPECIAL_TOKENS):
            raise fail(f"special_tokens must be {list(SPECIAL_TOKENS)}, got {data.get('special_tokens')!r}")
        for key in ("languages", "symbols"):
            if not isinstance(data.get(key), list):
                raise fail(f'"{key}" must be a list')
        try:
            vocab = cls(data["symbols"], data["languages"], data.get("kind"))
        except ValueError as error:
            raise fail(str(error)) from None
        if data.get("size") != len(vocab):
            raise fail(f"it says size {data.get('size')!r} but lists {len(vocab)} tokens")
        return vocab

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary as JSON (atomically: a crash leaves the old file or none)."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"
        return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise VocabularyFileError(
                f"{path} is not a usable Echo text vocabulary: not valid JSON ({error})"
            ) from None
        return cls.from_dict(data, str(path))


# Broad English word list for `from_inventory`: everyday words, then words chosen for the
# phones that only some voices make (rhotic vowels, syllabic n, glottal stop, x, ɬ, r, aː...),
# checked to give every phone that eSpeak NG's English voices produced on ~70k distinct words.
_ENGLISH_INVENTORY_WORDS = """
the a an and of to in is it that this with for on at by from as be are was were been have has had
do does did not no yes I you he she we they me him her us them my your his its our their
who what where when why how which whose whom
one two three four five six seven eight nine ten eleven twelve twenty thirty hundred thousand
million
first second third
man woman child children people person father mother brother sister family friend baby boy girl king
queen
day night morning evening today tomorrow yesterday week month year hour minute time moment early
late
again always never
water fire air earth sun moon star sky cloud rain snow wind storm weather river lake ocean sea
mountain
island forest tree
house home room door window floor wall roof kitchen garden garage bridge road street city town
village
country world
cat dog horse cow sheep pig bird fish mouse lion tiger bear wolf fox eagle owl duck goose snake frog
bee ant
red orange yellow green blue purple pink brown black white grey gray gold silver colour color
eye ear nose mouth tooth teeth hand arm leg foot feet head hair face heart blood bone skin voice
food bread butter cheese milk egg meat rice sugar salt coffee tea juice apple banana potato tomato
soup
big small little large long short high low hot cold warm cool new old young good bad better best
worse worst
happy sad angry afraid tired hungry thirsty quiet loud soft hard easy difficult strong weak rich
poor clean dirty
go come run walk jump swim fly sit stand sleep wake eat drink cook read write speak say tell talk
listen hear
see look watch
think know learn teach understand remember forget believe want need like love hate hope wish feel
touch smell taste
give take bring buy sell pay send make build break fix open close start stop begin finish push pull
carry
throw catch
book paper letter pen pencil picture music song story word name number question answer idea problem
reason
school church hospital office shop market bank hotel restaurant station airport library museum
theatre theater
car bus train ship boat plane bicycle engine wheel machine computer phone television radio camera
job work money price business company government law war peace power news information history
science nature
button written certain fountain kitten cotton bottle middle metal battle pretty
thing through breath bath both these those other although smooth
sure nation special measure pleasure vision usual beige genre regime treasure
chair judge joy age edge gentle giant
sing ring thank finger singer
use beauty few view cute huge human
vine very van have wave
zoo zebra rose busy lazy zero
hut hat hit heat hurt hoop hole hall
far heart park dark part army
four more born north course board
near fear clear beer deer
there hair care pair wear square
poor tour cure pure during jury
hire wire tired choir iron desire
our flower shower tower
heard turn learn nurse
bit beat bet bat but boot bought bite bout bay bar
about above around ago sofa comma supply support
palm calm spa
cloth loss log caught taught saw all call fall
put could would should wool
area real really
diet client violin diamond
wanted needed started roses houses glasses visited
funny lady
table simple uncle
curtain sudden eaten often
fact actor action matter batter ladder
loch Bach Ehrlich Scottish Scotland Welsh Llanelli Lloyd Llewellyn
croissant blanc ensemble
while whale whether
unary unique unit united
Korea Korean terroir cookies entities utilities lineage baa baaa sorry hurry mirror error
"""
