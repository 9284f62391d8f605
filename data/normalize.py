"""Text normalization: turn written text into the words a speaker would say.

eSpeak NG reads many written forms badly ("$5.20" becomes "dollar five point two zero"),
so numbers, currency, times, URLs and symbols are spelled out here, before phonemization
(and before sentencepiece, for the bpe front-end). Numbers are written out with num2words in
the text's language when num2words knows it; otherwise digits are left for eSpeak to read.
URLs, e-mail addresses, symbols, times, fractions, ordinals and years have English rules
only; other languages keep those as written.

    >>> normalize_text("It costs $5.20 — 50% off!!!")
    'It costs five dollars twenty cents, fifty percent off!'
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

from num2words import CONVERTER_CLASSES, num2words


class EmptyTextError(ValueError):
    """The text has nothing to speak (empty, whitespace or punctuation only)."""


def normalize_text(text: str, language: str = "en-us") -> str:
    """Return `text` as speakable words for `language` (an eSpeak NG code such as "en-us").

    Raises EmptyTextError (a ValueError) when nothing speakable is left.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    rules = _rules_for(language)
    original = text
    text = unicodedata.normalize("NFKC", text)
    text = _remove_invisible(text)
    text = _collapse_symbol_runs(text)
    text = _plain_typography(text, rules)
    text = _collapse_whitespace(text)
    if rules.english:
        text = _speak_urls_and_emails(text)
    if rules.number_language is not None and _DIGIT_RE.search(text):
        text = _expand_numbers(text, rules)
    if rules.english:
        text = _speak_symbols(text)
    text = _collapse_punctuation_runs(text)
    text = _cap_letter_runs(text)
    text = _collapse_whitespace(text)
    if not any(ch.isalnum() for ch in text):
        raise EmptyTextError(
            f"the text is empty: {original!r} has no words to speak after normalization; "
            "pass a sentence with at least one word in it, e.g. 'Hello there.'"
        )
    return text


@dataclass(frozen=True)
class LanguageRules:
    """What normalization does for one language."""

    english: bool  # URL, e-mail, symbol, time, fraction, ordinal and year rules
    number_language: str | None  # num2words code; None leaves digits for eSpeak
    decimal_mark: str
    group_mark: str  # thousands separator

    @classmethod
    def for_language(cls, language: str) -> LanguageRules:
        base = language.replace("_", "-").split("-")[0].lower()
        decimal_comma = base in _DECIMAL_COMMA_LANGUAGES
        return cls(
            english=base == "en",
            number_language=num2words_language(language),
            decimal_mark="," if decimal_comma else ".",
            group_mark="." if decimal_comma else ",",
        )


# Languages that write 3,14 for 3.14 and 1.000 for 1000.
_DECIMAL_COMMA_LANGUAGES = frozenset(
    "af az be bg bs ca cs da de el es et eu fi fo fr gl hr hu hy id is it ka kk lt lv mk nb nl "
    "no pl pt ro ru sk sl sq sr sv tr uk uz vi".split()
)
# eSpeak NG codes whose num2words code differs.
_NUM2WORDS_ALIASES = {"nb": "no", "kk": "kz"}
# num2words writes Japanese numbers in kanji, which eSpeak's ja voice reads as "Chinese letter".
_NUM2WORDS_UNUSABLE = frozenset({"ja"})


def num2words_language(language: str) -> str | None:
    """The num2words code for an eSpeak NG language code, or None when num2words lacks it."""
    parts = language.replace("_", "-").split("-")
    base = parts[0].lower()
    if base in _NUM2WORDS_UNUSABLE:
        return None
    base = _NUM2WORDS_ALIASES.get(base, base)
    if len(parts) > 1:
        regional = f"{base}_{parts[1].upper()}"
        if regional in CONVERTER_CLASSES:
            return regional
    return base if base in CONVERTER_CLASSES else None


@cache
def _rules_for(language: str) -> LanguageRules:
    return LanguageRules.for_language(language)


_ENGLISH = LanguageRules.for_language("en")


# ---------------------------------------------------------------------------------------------
# Characters, typography, runs


# Control characters and the invisible format characters (soft hyphen, zero-width space,
# direction marks, BOM) carry no sound. ZWNJ/ZWJ stay: they change spelling in Persian and
# Indic scripts.
_INVISIBLE_RE = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u061c\u180e\u200b\u200e\u200f"
                           "\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")


# Emoji and pictographs: eSpeak would read their Unicode names ("grinning face").
_EMOJI_RE = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff\ufe0e\ufe0f]")


def _remove_invisible(text: str) -> str:
    return _EMOJI_RE.sub(" ", _INVISIBLE_RE.sub("", text))


_QUOTES = str.maketrans(
    {
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2033": '"', "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u00b4": "'", "`": "'", "\u2010": "-", "\u2011": "-", "\u2212": "-", "\u2044": "/",
        "\u3002": ".", "\u3001": ",", "\u060c": ",", "\u061b": ";", "\u061f": "?", "\u0964": ".",
        "\u0965": ".", "|": ",",  # the phoneme stream uses "|" as its word boundary
    }
)
_DASH = "[\u2012\u2013\u2014\u2015]"
_RANGE_DASH_RE = re.compile(r"(?<=\d)\u2013(?=\d)")  # "1990–1995"
_PAUSE_DASH_RE = re.compile(rf"\s*(?:{_DASH}|--+)\s*|\s+-\s+")


def _plain_typography(text: str, rules: LanguageRules) -> str:
    text = text.translate(_QUOTES)
    text = _RANGE_DASH_RE.sub(" to " if rules.english else "-", text)
    # A dash between words is a pause: make it the comma that eSpeak and the phoneme
    # stream both treat as one.
    return _PAUSE_DASH_RE.sub(", ", text)


_WHITESPACE_RE = re.compile(r"\s+")
_DIGIT_RE = re.compile(r"\d")


def _collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text).strip()


_SYMBOL_RUN_RE = re.compile(r"([^\w\s.!?,;:])\1{3,}")


def _collapse_symbol_runs(text: str) -> str:
    """'*****' or '=====' (rules, decorations) -> one symbol."""
    return _SYMBOL_RUN_RE.sub(r"\1", text)


_ELLIPSIS_RE = re.compile(r"\.(?:\s*\.){2,}")
_DOUBLE_DOT_RE = re.compile(r"(?<!\.)\.\.(?!\.)")
_EXCLAIM_RUN_RE = re.compile(r"[!?](?:\s*[!?])+|[¡¿](?:\s*[¡¿])+")
_REPEATED_MARK_RE = re.compile(r"([,;:])(?:\s*\1)+")
_COMMA_BEFORE_STOP_RE = re.compile(r",\s*([.!?;:])")
_SPACE_BEFORE_MARK_RE = re.compile(r"\s+(?=[,.!?;:]+(?:\s|$))")


def _collapse_punctuation_runs(text: str) -> str:
    """'!!!!' -> '!', '?!?!' -> '?!', ',,' -> ',', '.....' -> '...'."""
    text = _ELLIPSIS_RE.sub("...", text)
    text = _DOUBLE_DOT_RE.sub(".", text)
    text = _EXCLAIM_RUN_RE.sub(lambda m: "".join(dict.fromkeys(m.group().replace(" ", ""))), text)
    text = _REPEATED_MARK_RE.sub(r"\1", text)
    text = _COMMA_BEFORE_STOP_RE.sub(r"\1", text)
    return _SPACE_BEFORE_MARK_RE.sub("", text)


_LETTER_RUN_RE = re.compile(r"([^\W\d_])\1{3,}")


def _cap_letter_runs(text: str) -> str:
    """'sooooo' -> 'sooo': a letter repeated more than three times is capped at three."""
    return _LETTER_RUN_RE.sub(r"\1\1\1", text)


# ---------------------------------------------------------------------------------------------
# URLs and e-mail addresses (English)

_TLDS = (
    "com|org|net|edu|gov|mil|int|io|ai|dev|app|co|uk|us|ca|au|de|fr|eu|info|biz|me|tv|ly|gg|xyz"
)
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL_RE = re.compile(
    rf"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"]+|\b(?:[a-z0-9-]+\.)+(?:{_TLDS})\b(?:/[^\s<>\"]*)?",
    re.IGNORECASE,
)
_URL_SCHEME_RE = re.compile(r"^(?:https?|ftp)://", re.IGNORECASE)
_URL_TRAILING_RE = re.compile(r"[.,;:!?)\]'\"]+$")
_URL_SYMBOL_WORDS = {
    ".": "dot", "/": "slash", "-": "dash", "_": "underscore", ":": "colon", "@": "at",
    "?": "question mark", "=": "equals", "&": "and", "#": "hash", "%": "percent",
    "+": "plus", "~": "tilde",
}
_URL_SPLIT_RE = re.compile(r"([./\-_:@?=&#%+~])")


def _speak_address(address: str) -> str:
    parts = [p for p in _URL_SPLIT_RE.split(address) if p]
    words = [_URL_SYMBOL_WORDS.get(p, p) for p in parts]
    words = ["w w w" if w.lower() == "www" else w for w in words]
    return " ".join(words)


def _speak_url(match: re.Match[str]) -> str:
    url = match.group()
    trailing = _URL_TRAILING_RE.search(url)
    tail = trailing.group() if trailing else ""
    url = url[: len(url) - len(tail)]
    url = _URL_SCHEME_RE.sub("", url).rstrip("/")
    return _speak_address(url) + tail


def _speak_urls_and_emails(text: str) -> str:
    text = _EMAIL_RE.sub(lambda m: " " + _speak_address(m.group()) + " ", text)
    return _URL_RE.sub(_speak_url, text)


# ---------------------------------------------------------------------------------------------
# Numbers


def _say(number: int | Decimal, rules: LanguageRules, to: str = "cardinal") -> str:
    """num2words without its list commas ("one thousand, two hundred"), which would become pauses."""
    return num2words(number, lang=rules.number_language, to=to).replace(",", "")


def _say_digits(digits: str, rules: LanguageRules) -> str:
    return " ".join(_say(int(d), rules) for d in digits)


_MAX_CARDINAL_DIGITS = 15  # longer digit strings (IDs, card numbers) are read digit by digit


def _say_integer(digits: str, rules: LanguageRules) -> str:
    if len(digits) > _MAX_CARDINAL_DIGITS or (len(digits) > 1 and digits.startswith("0")):
        return _say_digits(digits, rules)
    return _say(int(digits), rules)


def _say_number(sign: str, integer: str, fraction: str | None, rules: LanguageRules) -> str:
    """A signed integer or decimal, read as written ("3.14" -> "three point one four")."""
    if not rules.english:
        value = Decimal(f"{sign}{integer}.{fraction}") if fraction else int(f"{sign}{integer}")
        return _say_integer(integer, rules) if not sign and not fraction else _say(value, rules)
    words = _say_integer(integer, rules)
    if fraction is not None:
        words += f" point {_say_digits(fraction, rules)}"
    return f"minus {words}" if sign else words


def _number_pattern(rules: LanguageRules) -> str:
    """Integer (optionally with thousands separators) and fraction, as named groups."""
    group, decimal = re.escape(rules.group_mark), re.escape(rules.decimal_mark)
    return rf"(?P<int>\d{{1,3}}(?:{group}\d{{3}})+(?!\d)|\d+)(?:{decimal}(?P<frac>\d+))?"


@dataclass(frozen=True)
class _Currency:
    code: str  # ISO 4217, for num2words
    unit: str
    units: str
    subunit: str | None
    subunits: str | None


_CURRENCIES = {
    "$": _Currency("USD", "dollar", "dollars", "cent", "cents"),
    "£": _Currency("GBP", "pound", "pounds", "penny", "pence"),
    "€": _Currency("EUR", "euro", "euros", "cent", "cents"),
    "¥": _Currency("JPY", "yen", "yen", None, None),
}
_SCALES = {"k": "thousand", "m": "million", "bn": "billion", "thousand": "thousand",
           "million": "million", "billion": "billion", "trillion": "trillion"}


def _say_english_money(integer: str, fraction: str | None, currency: _Currency, scale: str | None) -> str:
    rules = _ENGLISH
    if scale:  # "$1.5 million" -> "one point five million dollars"
        return f"{_say_number('', integer, fraction, rules)} {_SCALES[scale.lower()]} {currency.units}"
    if fraction is not None and (len(fraction) > 2 or currency.subunit is None):
        return f"{_say_number('', integer, fraction, rules)} {currency.units}"
    units = int(integer)
    cents = int(fraction.ljust(2, "0")) if fraction else 0
    parts = []
    if units or not cents:
        parts.append(f"{_say_integer(integer, rules)} {currency.unit if units == 1 else currency.units}")
    if cents:
        parts.append(f"{_say(cents, rules)} {currency.subunit if cents == 1 else currency.subunits}")
    return " ".join(parts)


def _say_money(match: re.Match[str], rules: LanguageRules) -> str:
    groups = match.groupdict()
    sign, fraction, scale = groups["sign"] or "", groups["frac"], groups.get("scale")
    currency = _CURRENCIES[groups["sym"]]
    integer = groups["int"].replace(rules.group_mark, "")
    if rules.english:
        words = _say_english_money(integer, fraction, currency, scale)
        return f"minus {words}" if sign else words
    amount = Decimal(f"{sign}{integer}.{fraction or 0}")  # an int would be read as cents
    try:
        words = num2words(amount, lang=rules.number_language, to="currency", currency=currency.code)
        return words.replace(",", "")
    except Exception:  # num2words backends raise NotImplementedError, TypeError or KeyError here
        return f"{_say_number(sign, integer, fraction, rules)} {groups['sym']}"


@cache
def _money_res(rules: LanguageRules) -> tuple[re.Pattern[str], ...]:
    number = _number_pattern(rules)
    symbol = rf"(?P<sym>[{re.escape(''.join(_CURRENCIES))}])"
    scale = r"(?:\s?(?P<scale>thousand|million|billion|trillion|bn|k|m)\b)?" if rules.english else ""
    prefix = re.compile(rf"(?<![\d.,])(?P<sign>-)?{symbol}\s?{number}{scale}", re.IGNORECASE)
    postfix = re.compile(rf"(?<![\w.,])(?P<sign>-)?{number}\s?{symbol}")  # "5,20 €"
    return prefix, postfix


_TIME_RE = re.compile(
    r"\b(?P<h>[01]?\d|2[0-3])(?::(?P<m>[0-5]\d)(?!\d)|(?=\s?[ap]\.?m\b))"
    r"(?:\s?(?P<ampm>[ap])\.?m\b(?P<dot>\.)?)?",
    re.IGNORECASE,
)
_SENTENCE_START_RE = re.compile(r"\s*(?:$|[A-Z])")


def _say_time(match: re.Match[str]) -> str:
    """'10:30' -> 'ten thirty', '9:05 pm' -> 'nine oh five p m', '15:00' -> 'fifteen hundred'."""
    rules = _ENGLISH
    hour, minute, ampm = int(match["h"]), match["m"], match["ampm"]
    words = _say(hour, rules)
    if minute is not None and minute != "00":
        words += (" oh " if minute.startswith("0") else " ") + _say(int(minute), rules)
    elif minute == "00" and ampm is None:
        words += " o'clock" if hour <= 12 else " hundred"
    if ampm:
        words += f" {ampm.lower()} m"
        # the period of "5 p.m." may also end the sentence: keep it only then
        if match["dot"] and _SENTENCE_START_RE.match(match.string, match.end()):
            words += "."
    return words


_FRACTION_RE = re.compile(r"(?<![\w/.,])(?P<n>\d{1,3})/(?P<d>\d{1,2})(?![\w/.,])")


def _say_fraction(match: re.Match[str]) -> str:
    """'1/2' -> 'one half', '3/4' -> 'three quarters', '2/3' -> 'two thirds'."""
    rules = _ENGLISH
    numerator, denominator = int(match["n"]), int(match["d"])
    if denominator < 2:
        return f"{_say(numerator, rules)} over {_say(denominator, rules)}"
    name = {2: "half", 4: "quarter"}.get(denominator) or _say(denominator, rules, "ordinal")
    if numerator != 1:
        name = "halves" if name == "half" else name + "s"
    return f"{_say(numerator, rules)} {name}"


_DECADE_RE = re.compile(r"(?<![\w.,])(?P<year>1[1-9]\d0|20\d0)s\b")


def _say_decade(match: re.Match[str]) -> str:
    """'1980s' -> 'nineteen eighties'."""
    words = _say(int(match["year"]), _ENGLISH, "year")
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


_ORDINAL_RE = re.compile(rf"(?<![\w.,]){_number_pattern(_ENGLISH)}(?:st|nd|rd|th)\b", re.IGNORECASE)


def _say_ordinal(match: re.Match[str]) -> str:
    """'1st' -> 'first', '22nd' -> 'twenty-second'."""
    if match["frac"] is not None:
        return match.group()
    return _say(int(match["int"].replace(",", "")), _ENGLISH, "ordinal")


_NUMBER_SIGN_RE = re.compile(r"#(?=\s?\d)")


@cache
def _plain_number_re(rules: LanguageRules) -> re.Pattern[str]:
    decimal = re.escape(rules.decimal_mark)
    return re.compile(rf"(?<![\w{decimal}])(?P<sign>-(?=\d))?{_number_pattern(rules)}(?!{decimal}?\d)")


def _is_year(match: re.Match[str]) -> bool:
    # Four plain digits from 1100 to 2099 read as a year: "in 1984", but not "1984%"
    digits = match["int"]
    return (
        match["sign"] is None and match["frac"] is None and len(digits) == 4 and digits.isdigit()
        and 1100 <= int(digits) <= 2099 and not match.string.startswith("%", match.end())
    )


def _expand_plain_numbers(text: str, rules: LanguageRules) -> str:
    def replace(match: re.Match[str]) -> str:
        if rules.english and _is_year(match):
            words = _say(int(match["int"]), rules, "year")
        else:
            integer = match["int"].replace(rules.group_mark, "")
            words = _say_number(match["sign"] or "", integer, match["frac"], rules)
        glued = match.end() < len(match.string) and match.string[match.end()].isalpha()
        return words + " " if glued else words  # "5km" -> "five km", not "fivekm"

    return _plain_number_re(rules).sub(replace, text)


def _expand_numbers(text: str, rules: LanguageRules) -> str:
    for pattern in _money_res(rules):
        text = pattern.sub(lambda m: _say_money(m, rules), text)
    if rules.english:
        text = _NUMBER_SIGN_RE.sub(" number ", text)
        text = _TIME_RE.sub(_say_time, text)
        text = _FRACTION_RE.sub(_say_fraction, text)
        text = _DECADE_RE.sub(_say_decade, text)
        text = _ORDINAL_RE.sub(_say_ordinal, text)
    return _expand_plain_numbers(text, rules)


# ---------------------------------------------------------------------------------------------
# Symbols (English)

_SYMBOL_WORDS = {
    "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "°": "degrees", "#": "hash", "&": "and",
    "%": "percent", "@": "at", "+": "plus", "=": "equals", "×": "times", "/": "slash",
}
_SYMBOL_RE = re.compile(r"°\s?[CF]\b|[°#&%@+=×/]")
_ONE_DEGREES_RE = re.compile(r"\bone degrees\b")


def _speak_symbols(text: str) -> str:
    text = _SYMBOL_RE.sub(lambda m: f" {_SYMBOL_WORDS[m.group().replace(' ', '')]} ", text)
    return _ONE_DEGREES_RE.sub("one degree", text)
