"""TextFrontend: text (+ language) -> token ids, with a vocabulary saved next to the model.

Two kinds, chosen when the front-end is built and recorded in its vocabulary file:

- "phoneme" (default): normalize_text, then eSpeak NG phonemes (see data.phonemes);
- "bpe": normalize_text, then a sentencepiece BPE model trained on the corpus, for languages
  or texts that have no eSpeak voice.

Layout of `encode(text, language)`:

    [<language>, <bos>, t1 ... tN, <eos>]      (add_bos_eos=True, the default)
    [<language>, t1 ... tN]                     (add_bos_eos=False)

The language tag is always the first id, so a model finds it at a fixed position whatever the
rest of the layout; <bos>/<eos> then delimit the text tokens themselves.

    frontend = TextFrontend.build(texts, languages="en-us")
    frontend.save_pretrained("runs/lm/text")
    TextFrontend.from_pretrained("runs/lm/text").encode("Hello, world!")
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from data.normalize import normalize_text
from data.phonemes import Phonemizer, check_language
from data.pretrained import resolve_pretrained, write_directory
from data.vocab import Vocabulary

VOCAB_FILE = "text_vocab.json"
BPE_MODEL_FILE = "text_bpe.model"


def _per_text_languages(texts: Sequence[str], languages: str | Sequence[str]) -> list[str]:
    """One language per text: a single code applies to all of them."""
    if isinstance(languages, str):
        return [languages] * len(texts)
    languages = list(languages)
    if len(languages) != len(texts):
        raise ValueError(
            f"languages must be one code for all texts or one code per text; got {len(languages)} "
            f"codes for {len(texts)} texts"
        )
    return languages


def _train_bpe(texts: list[str], vocab_size: int) -> bytes:
    """A sentencepiece BPE model (serialized) trained in memory on normalized `texts`."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may not fill vocab_size; take what it has
        character_coverage=1.0,  # keep every character: corpora here are small and curated
        normalization_rule_name="identity",  # normalize_text already did the normalizing
        split_digits=True,
        unk_id=0,  # our own <pad>/<bos>/<eos> live in the Vocabulary, not in sentencepiece
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=max(1, min(8, os.cpu_count() or 1)),
        minloglevel=2,
    )
    return model.getvalue()


def _bpe_pieces(processor: spm.SentencePieceProcessor) -> list[str]:
    """The model's pieces in id order, without its <unk> (the Vocabulary has its own)."""
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
            if not processor.is_unknown(i)]


class TextFrontend:
    """Text to token ids for one vocabulary ("phoneme" or "bpe" kind, see the module docstring)."""

    def __init__(self, vocab: Vocabulary, *, bpe_model: bytes | None = None,
                 phonemizer: Phonemizer | None = None) -> None:
        self.vocab = vocab
        self._bpe_model = bpe_model
        self._sentencepiece: spm.SentencePieceProcessor | None = None
        self._phonemizer: Phonemizer | None = None
        if vocab.kind == "bpe":
            if bpe_model is None:
                raise ValueError("a bpe front-end needs its sentencepiece model (bpe_model bytes)")
            self._sentencepiece = spm.SentencePieceProcessor(model_proto=bpe_model)
            pieces = _bpe_pieces(self._sentencepiece)
            if list(vocab.symbols) != pieces:
                raise ValueError(
                    "the sentencepiece model does not match the vocabulary's symbols "
                    f"({len(pieces)} pieces vs {len(vocab.symbols)} symbols); "
                    "they must come from the same build"
                )
        else:
            if bpe_model is not None:
                raise ValueError("a phoneme front-end takes no bpe_model")
            self._phonemizer = phonemizer or Phonemizer()

    @classmethod
    def build(cls, texts: Sequence[str], languages: str | Sequence[str] = "en-us", *,
              kind: str = "phoneme", bpe_vocab_size: int = 512, min_count: int = 1,
              phonemizer: Phonemizer | None = None) -> TextFrontend:
        """Build the vocabulary (and for "bpe", train sentencepiece) from a corpus.

        `languages` is one eSpeak-style code for every text, or one code per text.
        """
        if isinstance(texts, str):
            raise TypeError("build takes a list of texts, not one string")
        if not texts:
            raise ValueError("build needs at least one text")
        text_languages = _per_text_languages(texts, languages)
        if kind == "phoneme":
            phonemizer = phonemizer or Phonemizer()
            token_lists = []
            for language in dict.fromkeys(text_languages):
                check_language(language)  # before any text work: the clearest error first
                group = [text for text, lang in zip(texts, text_languages) if lang == language]
                token_lists.extend(phonemizer.phonemize(group, language))
            vocab = Vocabulary.build(token_lists, text_languages, kind="phoneme", min_count=min_count)
            return cls(vocab, phonemizer=phonemizer)
        if kind == "bpe":
            if bpe_vocab_size < 2:
                raise ValueError(f"bpe_vocab_size must be >= 2, got {bpe_vocab_size}")
            normalized = [normalize_text(text, language) for text, language in zip(texts, text_languages)]
            model = _train_bpe(normalized, bpe_vocab_size)
            pieces = _bpe_pieces(spm.SentencePieceProcessor(model_proto=model))
            vocab = Vocabulary(pieces, sorted(set(text_languages)), kind="bpe")
            return cls(vocab, bpe_model=model)
        raise ValueError(f'kind must be "phoneme" or "bpe", got {kind!r}')

    # -- inspection ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.vocab.kind

    @property
    def languages(self) -> tuple[str, ...]:
        return self.vocab.languages

    @property
    def unknown_counts(self) -> Counter[str]:
        """How often each symbol outside the vocabulary was met while encoding (a copy)."""
        return Counter(self.vocab.unknown_counts)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"TextFrontend(kind={self.kind!r}, vocab_size={len(self.vocab)}, "
                f"languages={list(self.languages)})")

    # -- text -> tokens -> ids ----------------------------------------------------------------

    def tokens(self, text: str, language: str = "en-us") -> list[str]:
        """The symbols `text` becomes (phonemes or pieces), without language tag or <bos>/<eos>."""
        return self.tokens_batch([text], language)[0]

    def tokens_batch(self, texts: Sequence[str], language: str | Sequence[str] = "en-us") -> list[list[str]]:
        if isinstance(texts, str):
            raise TypeError("tokens_batch takes a list of texts; use tokens() for one")
        text_languages = _per_text_languages(texts, language)
        for lang in dict.fromkeys(text_languages):
            self.vocab.language_id(lang)  # a language the front-end was not built for is an error
        results: list[list[str]] = [[] for _ in texts]
        for lang in dict.fromkeys(text_languages):
            positions = [i for i, text_lang in enumerate(text_languages) if text_lang == lang]
            group = [texts[i] for i in positions]
            for i, tokens in zip(positions, self._tokenize(group, lang), strict=True):
                results[i] = tokens
        return results

    def _tokenize(self, texts: list[str], language: str) -> list[list[str]]:
        if self._phonemizer is not None:
            return self._phonemizer.phonemize(texts, language)
        assert self._sentencepiece is not None
        normalized = [normalize_text(text, language) for text in texts]
        return self._sentencepiece.encode(normalized, out_type=str)

    def encode(self, text: str, language: str = "en-us", add_bos_eos: bool = True) -> list[int]:
        """[<language>, <bos>, tokens..., <eos>] (see the module docstring)."""
        return self.encode_batch([text], language, add_bos_eos)[0]

    def encode_batch(self, texts: Sequence[str], language: str | Sequence[str] = "en-us",
                     add_bos_eos: bool = True) -> list[list[int]]:
        """`encode` for many texts, phonemized in one batch; `language` is one code or one per text."""
        text_languages = _per_text_languages(texts, language)
        vocab = self.vocab
        encoded = []
        for tokens, lang in zip(self.tokens_batch(texts, text_languages), text_languages, strict=True):
            ids = vocab.encode(tokens)
            if add_bos_eos:
                ids = [vocab.bos_id, *ids, vocab.eos_id]
            encoded.append([vocab.language_id(lang), *ids])
        return encoded

    def decode(self, ids: Sequence[int]) -> list[str]:
        return self.vocab.decode(ids)

    # -- files --------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write text_vocab.json (and text_bpe.model for a bpe front-end) into `directory`."""

        def write(tmp: Path) -> None:
            if self._bpe_model is not None:
                (tmp / BPE_MODEL_FILE).write_bytes(self._bpe_model)
            self.vocab.save(tmp / VOCAB_FILE)

        return write_directory(directory, write, marker=VOCAB_FILE)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, phonemizer: Phonemizer | None = None) -> TextFrontend:
        """Load a directory written by `save_pretrained` (or a hub id)."""
        directory = resolve_pretrained(path_or_hub_id, (VOCAB_FILE, BPE_MODEL_FILE), what="text front-end")
        vocab_path = directory / VOCAB_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"no text front-end in {directory}: {VOCAB_FILE} is missing")
        vocab = Vocabulary.load(vocab_path)
        if vocab.kind == "bpe":
            model_path = directory / BPE_MODEL_FILE
            if not model_path.is_file():
                raise FileNotFoundError(f"{directory} holds a bpe vocabulary but not its {BPE_MODEL_FILE}")
            return cls(vocab, bpe_model=model_path.read_bytes())
        return cls(vocab, phonemizer=phonemizer)
