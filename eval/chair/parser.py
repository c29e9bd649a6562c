"""Turn a caption into CHAIR object mentions.

Re-implements ``caption_to_words`` of OPERA ``61426efe`` ``chair.py`` (the NLTK
lemmatiser variant also used by HALC ``eval/chair.py``, DAMRO and lmms-eval), as
described in docs/evaluators.md §2.4:

1. lowercase, ``nltk.word_tokenize``;
2. ``nltk.pos_tag``; tags J/V/N/R -> WordNet ADJ/VERB/NOUN/ADV, anything else NOUN;
   ``WordNetLemmatizer.lemmatize(token, pos)``;
3. merge two-word phrases greedily left to right (:data:`DOUBLE_WORDS`) -> raw words;
4. if "toilet" and "seat" both occur, drop every "seat" (else it fires "chair");
5. keep the raw words that are lexicon entries; each is one mention of its node word
   (duplicates kept).

The original ``pattern.en.singularize`` variant (``LisaAnne/Hallucination``
``6e4d33c4``) is not offered: ``pattern`` does not install on current Python and a
re-implementation could not be shown to give the same lemmas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eval.chair.lexicon import DOUBLE_WORDS, INVERSE_SYNONYMS
from eval.chair.nltk_data import ensure_nltk_data, import_nltk

VARIANTS = ("lemmatize",)


@dataclass(frozen=True)
class ParsedCaption:
    words: tuple[str, ...]  # lexicon entries mentioned, in order, duplicates kept
    node_words: tuple[str, ...]  # their node words (COCO category names)
    raw_words: tuple[str, ...]  # all tokens after merging (punctuation included)


class CaptionParser:
    """The lemmatiser caption parser; loads the NLTK models once."""

    variant = "lemmatize"

    def __init__(self, *, download_nltk: bool = False) -> None:
        ensure_nltk_data(download=download_nltk)
        nltk = import_nltk()
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer
        from nltk.tag import PerceptronTagger

        self._tokenize = nltk.word_tokenize
        # Same model nltk.pos_tag uses for English; built once instead of per call.
        self._tagger: Any = PerceptronTagger(lang="eng")
        self._lemmatizer = WordNetLemmatizer()
        self._pos = {"J": wordnet.ADJ, "V": wordnet.VERB, "N": wordnet.NOUN, "R": wordnet.ADV}
        self._noun = wordnet.NOUN

    def normalise(self, caption: str) -> list[str]:
        tokens = self._tokenize(caption.lower())
        tagged = self._tagger.tag(tokens)
        return [
            self._lemmatizer.lemmatize(tok, self._pos.get(tag[:1], self._noun))
            for tok, tag in tagged
        ]

    def parse(self, caption: str) -> ParsedCaption:
        return parse_tokens(self.normalise(caption))


def merge_double_words(tokens: list[str]) -> list[str]:
    """Greedy left-to-right merge of two-token phrases (step 3)."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        pair = " ".join(tokens[i : i + 2])
        if i + 1 < len(tokens) and pair in DOUBLE_WORDS:
            out.append(DOUBLE_WORDS[pair])
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def parse_tokens(tokens: list[str]) -> ParsedCaption:
    """Steps 3-5 on already normalised tokens."""
    raw = merge_double_words(tokens)
    words = raw
    if "toilet" in words and "seat" in words:
        words = [w for w in words if w != "seat"]
    mentions = tuple(w for w in words if w in INVERSE_SYNONYMS)
    return ParsedCaption(mentions, tuple(INVERSE_SYNONYMS[w] for w in mentions), tuple(raw))


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*")


def drop_incomplete_sentence(caption: str) -> str:
    """Cut the text after the last sentence end (for short max-token settings).

    OPERA issue #30: with 64 new tokens, "we will discard the last sentence if it is
    incomplete". A caption with no sentence end at all is kept whole (nothing to keep
    otherwise).
    """
    text = caption.rstrip()
    ends = list(_SENTENCE_END.finditer(text))
    if not ends or ends[-1].end() == len(text):
        return text
    return text[: ends[-1].end()]
