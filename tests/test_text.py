"""Text front-end: normalization, phonemes, vocabulary, TextFrontend (phoneme and bpe)."""

from __future__ import annotations

import json
import logging
import random

import pytest

from data.frontend import BPE_MODEL_FILE, VOCAB_FILE, TextFrontend
from data.normalize import EmptyTextError, normalize_text
from data.phonemes import (
    ELLIPSIS,
    PUNCTUATION,
    STRESS_MARKS,
    WORD_BOUNDARY,
    Phonemizer,
    UnsupportedLanguageError,
)
from data.vocab import SPECIAL_TOKENS, Vocabulary, VocabularyFileError

ENGLISH_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, doesn't she?",
    "Would you like a cup of coffee or a glass of orange juice?",
    "Their car broke down near the bridge, so they walked home through the rain.",
    "I thought the measure was unusual, but the vision was clear.",
    "Which hour suits you: early in the morning, or late at night?",
    "Our choir sang beautifully in the old church on Sunday!",
    "He was born on the 4th of July, 1976, and paid $3.50 for the ticket.",
    "Written certainly, the button on the mountain fountain was forgotten.",
    "Judge the giant's joy by the edge of the village garage.",
    "A purple turtle heard the nurse learn a new word.",
    "Pure cure: the jury toured the poor district during June.",
]


@pytest.fixture(scope="module")
def phonemizer() -> Phonemizer:
    return Phonemizer()


def _phones(tokens: list[str]) -> list[str]:
    return [t for t in tokens if t not in PUNCTUATION and t not in STRESS_MARKS and t != WORD_BOUNDARY]


# -- normalization ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("In 1984 it rained.", "In nineteen eighty-four it rained."),
        ("It costs $5.20 today.", "It costs five dollars twenty cents today."),
        ("Only $1 and 99¢", "Only one dollar and ninety-nine¢"),
        ("£3.01 or €0.50", "three pounds one penny or fifty cents"),
        ("The 1st, 3rd and 22nd.", "The first, third and twenty-second."),
        ("It was -5 degrees.", "It was minus five degrees."),
        ("About 1,000,000 people.", "About one million people."),
        ("Pi is 3.14", "Pi is three point one four"),
        ("We won 50% of 12 games", "We won fifty percent of twelve games"),
        ("Tom & Jerry = 2 + 2", "Tom and Jerry equals two plus two"),
        ("At 30°C, call #2", "At thirty degrees Celsius, call number two"),
        ("Go to https://www.example.com/docs now", "Go to w w w dot example dot com slash docs now"),
        ("See example.org.", "See example dot org."),
        ("Mail jane.doe@example.com today", "Mail jane dot doe at example dot com today"),
        ("“Quoted” — and ‘single’", "\"Quoted\", and 'single'"),
        ("Nooooooo!!!!!!", "Nooo!"),
        ("What?!?!?! Wait......", "What?! Wait..."),
        ("the   spaced\n\ttext ", "the spaced text"),
        ("Meet at 10:30 in the 1990s.", "Meet at ten thirty in the nineteen nineties."),
    ],
)
def test_normalize_english(text: str, expected: str) -> None:
    assert normalize_text(text) == expected


def test_normalize_other_languages() -> None:
    french = normalize_text("Il a 21 ans et 3,5 kilos.", "fr-fr")
    assert french == "Il a vingt et un ans et trois virgule cinq kilos."
    assert normalize_text("5,20 €", "de") == "fünf Euro und zwanzig Cent"
    # num2words has no Swahili: digits are left for eSpeak; English symbol rules do not apply
    assert normalize_text("Nina 21 & 3%", "sw") == "Nina 21 & 3%"


@pytest.mark.parametrize("text", ["", "   \n\t", "!!!", "... — ?!", "\u200b"])
def test_empty_text_raises(text: str) -> None:
    with pytest.raises(ValueError, match="empty") as error:
        normalize_text(text)
    assert isinstance(error.value, EmptyTextError)
    assert "pass a sentence" in str(error.value)


# -- phonemes ---------------------------------------------------------------------------------


def test_phonemes_punctuation_stress_and_word_boundaries(phonemizer: Phonemizer) -> None:
    [tokens] = phonemizer.phonemize(["Hello, world! Are you there? Well... yes."])
    for mark in [",", "!", "?", ELLIPSIS, "."]:
        assert mark in tokens
    assert tokens[:5] == ["h", "ə", "l", "ˈ", "oʊ"]  # "oʊ" one token, stress split off before it
    assert tokens[5:7] == [",", WORD_BOUNDARY]
    assert tokens[-1] == "."
    assert tokens.count(WORD_BOUNDARY) == 6  # seven words
    assert tokens[0] != WORD_BOUNDARY and tokens[-1] != WORD_BOUNDARY
    assert "ˈ" in tokens
    for token in tokens:  # stress marks and punctuation are never glued to a phone
        assert token in STRESS_MARKS or not set(token) & set(STRESS_MARKS)
        assert token in PUNCTUATION or not set(token) & set(",.!?")
    for first, second in zip(tokens, tokens[1:]):
        if first in STRESS_MARKS:
            assert second not in PUNCTUATION and second != WORD_BOUNDARY


def test_phonemes_quotes_and_brackets_attach_to_their_words(phonemizer: Phonemizer) -> None:
    [tokens] = phonemizer.phonemize(['He said "hi" (twice).'])
    start = tokens.index('"')
    assert tokens[start - 1] == WORD_BOUNDARY and tokens[start + 1] == "h"
    assert tokens[tokens.index(")") + 1] == "."


def test_phonemes_of_numbers_are_those_of_their_words(phonemizer: Phonemizer) -> None:
    pairs = [
        ("In 1984.", "In nineteen eighty-four."),
        ("It costs $5.20.", "It costs five dollars twenty cents."),
        ("The 3rd time.", "The third time."),
    ]
    written, spoken = zip(*pairs)
    assert phonemizer.phonemize(list(written)) == phonemizer.phonemize(list(spoken))
    [tokens] = phonemizer.phonemize(["3rd"])
    assert _phones(tokens) == ["θ", "ɜː", "d"]


def test_phonemizer_cache_and_batching() -> None:
    phonemizer = Phonemizer()
    texts = ["A first sentence.", "A second one!", "A first sentence."]
    first = phonemizer.phonemize(texts)
    assert phonemizer.backend_calls == 1  # three texts, one eSpeak call
    assert phonemizer.backend_lines == 2  # the repeated text went once
    assert first[0] == first[2]
    again = phonemizer.phonemize(["A first sentence.", "A  first   sentence."])  # same once normalized
    assert phonemizer.backend_calls == 1
    assert again == [first[0], first[0]]
    phonemizer.phonemize(["Something new.", "A second one!"])
    assert phonemizer.backend_calls == 2 and phonemizer.backend_lines == 3
    assert phonemizer.cache_size == 3


def test_phonemizer_cache_is_bounded() -> None:
    phonemizer = Phonemizer(max_cache_entries=2)
    phonemizer.phonemize(["one", "two", "three"])
    assert phonemizer.cache_size == 2
    phonemizer.phonemize(["three"])
    assert phonemizer.backend_calls == 1
    phonemizer.phonemize(["one"])  # the oldest was dropped
    assert phonemizer.backend_calls == 2


def test_phonemizer_rejects_unknown_language_and_empty_text(phonemizer: Phonemizer) -> None:
    with pytest.raises(UnsupportedLanguageError, match="'xx-nope'.*kind=\"bpe\""):
        phonemizer.phonemize(["hello"], "xx-nope")
    with pytest.raises(ValueError, match="empty"):
        phonemizer.phonemize(["fine", "?!"])
    with pytest.raises(TypeError):
        phonemizer.phonemize("not a list")  # type: ignore[arg-type]


def test_phonemizer_other_language(phonemizer: Phonemizer) -> None:
    [tokens] = phonemizer.phonemize(["Bonjour, j'ai 21 ans."], "fr-fr")
    assert "," in tokens and "." in tokens and "ʒ" in tokens


# -- vocabulary -------------------------------------------------------------------------------


def test_vocabulary_build_save_load_round_trip(tmp_path, phonemizer: Phonemizer) -> None:
    token_lists = phonemizer.phonemize(ENGLISH_SENTENCES)
    vocab = Vocabulary.build(token_lists, ["en-us"])
    assert [vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id] == [0, 1, 2, 3]
    assert vocab.decode([0, 1, 2, 3, 4]) == [*SPECIAL_TOKENS, "<en-us>"]
    assert list(vocab.symbols) == sorted(vocab.symbols)
    assert len(vocab) == 5 + len(vocab.symbols)
    ids = [vocab.encode(tokens) for tokens in token_lists]
    assert all(min(row) >= 5 for row in ids) and not vocab.unknown_counts
    assert vocab.decode(ids[0]) == token_lists[0]

    path = vocab.save(tmp_path / "vocab.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["kind"] == "phoneme" and saved["format_version"] == 1 and "ˈ" in saved["symbols"]
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert [loaded.encode(tokens) for tokens in token_lists] == ids
    # deterministic: the corpus order does not matter
    assert Vocabulary.build(reversed(token_lists), ["en-us"]) == vocab


def test_vocabulary_min_count() -> None:
    vocab = Vocabulary.build([["a", "b", "a"], ["a", "c", "c"]], ["en-us"], min_count=2)
    assert vocab.symbols == ("a", "c")


def test_vocabulary_unknown_symbols_are_counted(caplog) -> None:
    vocab = Vocabulary(["a", "b"], ["en-us"])
    with caplog.at_level(logging.WARNING, logger="data.vocab"):
        ids = vocab.encode(["a", "ʘ", "b", "ʘ", "ǂ"])
    assert ids == [5, vocab.unk_id, 6, vocab.unk_id, vocab.unk_id]
    assert vocab.unknown_counts == {"ʘ": 2, "ǂ": 1}
    assert len([r for r in caplog.records if "ʘ" in r.getMessage()]) == 1  # warned once per symbol


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else"}', "format"),
        ('{"format": "echo-text-vocabulary", "format_version": 99}', "upgrade"),
    ],
)
def test_vocabulary_load_bad_file(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VocabularyFileError, match=message):
        Vocabulary.load(path)


def test_vocabulary_load_inconsistent_file(tmp_path) -> None:
    path = Vocabulary(["a", "b"], ["en-us"]).save(tmp_path / "vocab.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["symbols"].append("a")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(VocabularyFileError, match="duplicate"):
        Vocabulary.load(path)
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "missing.json")


def test_inventory_covers_english_sentences(phonemizer: Phonemizer) -> None:
    vocab = Vocabulary.from_inventory("en-us", phonemizer)
    for symbol in [*PUNCTUATION, *STRESS_MARKS, WORD_BOUNDARY, "aɪ", "oʊ", "ɜː", "dʒ", "ʒ", "ð", "ŋ"]:
        assert symbol in vocab
    for tokens in phonemizer.phonemize(ENGLISH_SENTENCES):
        vocab.encode(tokens)
    assert not vocab.unknown_counts, vocab.unknown_counts
    british = Vocabulary.from_inventory("en-gb", phonemizer)
    for tokens in phonemizer.phonemize(ENGLISH_SENTENCES, "en-gb"):
        british.encode(tokens)
    assert not british.unknown_counts, british.unknown_counts


def test_inventory_for_other_languages_says_to_build_from_corpus() -> None:
    with pytest.raises(ValueError, match="build the vocabulary from your corpus"):
        Vocabulary.from_inventory("fr-fr")


# -- TextFrontend -----------------------------------------------------------------------------


def test_frontend_phoneme_encode_layout_and_round_trip(tmp_path, phonemizer: Phonemizer) -> None:
    frontend = TextFrontend.build(ENGLISH_SENTENCES, languages="en-us", phonemizer=phonemizer)
    vocab = frontend.vocab
    text = ENGLISH_SENTENCES[0]
    ids = frontend.encode(text)
    assert ids[0] == vocab.language_id("en-us")
    assert ids[1] == vocab.bos_id and ids[-1] == vocab.eos_id
    assert frontend.decode(ids[2:-1]) == frontend.tokens(text)
    assert frontend.encode(text, add_bos_eos=False) == [ids[0], *ids[2:-1]]
    some = ENGLISH_SENTENCES[:3]
    assert frontend.encode_batch(some) == [frontend.encode(t) for t in some]

    frontend.save_pretrained(tmp_path)
    assert (tmp_path / VOCAB_FILE).is_file() and not (tmp_path / BPE_MODEL_FILE).exists()
    loaded = TextFrontend.from_pretrained(tmp_path)
    assert loaded.kind == "phoneme" and loaded.vocab == vocab
    assert loaded.encode_batch(ENGLISH_SENTENCES) == frontend.encode_batch(ENGLISH_SENTENCES)


def test_frontend_counts_unknown_symbols(phonemizer: Phonemizer) -> None:
    frontend = TextFrontend.build(["Hello there."], phonemizer=phonemizer)
    ids = frontend.encode("Zebra jazz!")
    assert frontend.vocab.unk_id in ids
    assert frontend.unknown_counts["z"] == 2 and frontend.unknown_counts["!"] == 1
    assert frontend.decode(frontend.encode("Hello there.")).count("<unk>") == 0


def test_frontend_errors(phonemizer: Phonemizer) -> None:
    with pytest.raises(UnsupportedLanguageError, match="'tlh'.*bpe"):
        TextFrontend.build(["nuqneH"], languages="tlh", phonemizer=phonemizer)
    frontend = TextFrontend.build(["Hello there."], phonemizer=phonemizer)
    with pytest.raises(ValueError, match="empty"):
        frontend.encode("   ")
    with pytest.raises(ValueError, match="'fr-fr' is not in this vocabulary"):
        frontend.encode("Bonjour", language="fr-fr")
    with pytest.raises(ValueError, match="one code per text"):
        frontend.encode_batch(["a", "b"], ["en-us"])


def _generated_corpus(count: int) -> list[str]:
    rng = random.Random(0)
    subjects = ["the cat", "a farmer", "my sister", "our teacher", "the old man", "a small bird"]
    verbs = ["sees", "finds", "carries", "paints", "wants", "remembers"]
    objects = ["a red ball", "the river", "seven apples", "the blue house", "a long letter", "the garden"]
    endings = [".", "!", "?", " today.", " at night.", " again."]
    sentences = []
    for _ in range(count):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}"
        sentences.append(sentence.capitalize())
    return sentences


def test_frontend_bpe_trains_and_round_trips(tmp_path) -> None:
    corpus = _generated_corpus(300)
    # "tlh" (Klingon) has no eSpeak voice: the bpe kind does not need one
    frontend = TextFrontend.build(corpus, languages="tlh", kind="bpe", bpe_vocab_size=80)
    assert frontend.kind == "bpe"
    assert 20 < len(frontend.vocab.symbols) <= 80
    pieces = frontend.tokens(corpus[0], "tlh")
    assert "".join(pieces).replace("▁", " ").strip() == normalize_text(corpus[0], "tlh")
    ids = frontend.encode_batch(corpus, "tlh")
    assert not frontend.unknown_counts
    assert all(row[0] == frontend.vocab.language_id("tlh") for row in ids)

    frontend.save_pretrained(tmp_path)
    assert (tmp_path / BPE_MODEL_FILE).is_file()
    assert json.loads((tmp_path / VOCAB_FILE).read_text(encoding="utf-8"))["kind"] == "bpe"
    loaded = TextFrontend.from_pretrained(tmp_path)
    assert loaded.kind == "bpe" and loaded.vocab == frontend.vocab
    assert loaded.encode_batch(corpus, "tlh") == ids
    loaded.encode("The cat finds a ж.", "tlh")
    assert loaded.unknown_counts  # a character sentencepiece never saw is counted, not fatal


def test_frontend_saved_over_another_and_loaded_by_hub_id(tmp_path, monkeypatch, phonemizer: Phonemizer) -> None:
    import huggingface_hub

    TextFrontend.build(_generated_corpus(100), languages="tlh", kind="bpe", bpe_vocab_size=40).save_pretrained(tmp_path)
    phonemes = TextFrontend.build(["Hello there."], phonemizer=phonemizer)
    phonemes.save_pretrained(tmp_path)  # the vocabulary file decides the kind: a stale text_bpe.model is not read
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, allow_patterns: asked.append((repo, allow_patterns)) or str(tmp_path))
    loaded = TextFrontend.from_pretrained("someone/echo-text", phonemizer=phonemizer)
    assert loaded.kind == "phoneme" and loaded.vocab == phonemes.vocab
    assert asked == [("someone/echo-text", [VOCAB_FILE, BPE_MODEL_FILE])]
    with pytest.raises(FileNotFoundError, match="text front-end directory .* does not exist"):
        TextFrontend.from_pretrained(tmp_path / "nowhere")


def test_frontend_bpe_normalizes_numbers_for_english() -> None:
    corpus = [*_generated_corpus(200), "It costs $5.20 in 1984."]
    frontend = TextFrontend.build(corpus, languages="en-us", kind="bpe", bpe_vocab_size=120)
    assert not any(ch.isdigit() for piece in frontend.tokens("Pay $5.20 now.") for ch in piece)


def test_espeak_is_configured_once_whatever_the_number_of_backends():
    from data import phonemes

    phonemes._create_backend("en-us", True)
    phonemes._create_backend("en-us", False)
    phonemes.espeak_languages()
    concise = [f for f in phonemes._espeak_logger.filters if isinstance(f, phonemes._ConcisePhonemizerWarnings)]
    assert len(concise) == 1
