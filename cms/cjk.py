"""Chinese, Japanese and Korean text cut into the pieces the search index holds
(see cms/search.py): one- and two-character terms of each run of CJK letters."""

from __future__ import annotations

import re

from modelsearch.query import Or, PlainText

# The search field (a method of the model) that holds a model's CJK pieces.
CJK_FIELD = "cjk_search_terms"
# The letters of Han, kana and Hangul (punctuation such as 、 or ・ is left out: the
# tokenizers split on it anyway).
_CJK_RUN = re.compile(
    "["
    "\u1100-\u11ff\u3131-\u318e\uac00-\ud7a3"  # Hangul
    "\u3005-\u3007\u3041-\u3096\u309d-\u309f"  # 々〆〇, hiragana
    "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\uff66-\uff9f"  # katakana (ー included)
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"  # Han
    "]+"
)
_WORD = re.compile(r"\w")


def _pieces(token: str) -> list[tuple[str, bool]]:
    """``token`` cut into its CJK runs and the text between them, as (text, is_cjk), without
    pieces that hold no letter or digit."""
    pieces, at = [], 0
    for run in _CJK_RUN.finditer(token):
        pieces.append((token[at : run.start()], False))
        pieces.append((run.group(), True))
        at = run.end()
    pieces.append((token[at:], False))
    return [(text, cjk) for text, cjk in pieces if _WORD.search(text)]


def cjk_index_text(*texts: str) -> str:
    """The terms to index beside ``texts`` so that any word inside their CJK runs is found:
    each run's characters and pairs of neighbouring characters, and the other letters of
    a word that has such a run (the "Kyoto" of "Kyoto京都"). Each term appears once; a
    text without CJK letters adds nothing."""
    terms: dict[str, None] = {}
    for text in texts:
        for token in text.split():
            if not _CJK_RUN.search(token):
                continue
            for piece, cjk in _pieces(token):
                if not cjk:
                    terms[piece] = None
                    continue
                terms.update(dict.fromkeys(piece))
                terms.update(dict.fromkeys(a + b for a, b in zip(piece, piece[1:], strict=False)))
    return " ".join(terms)


def cjk_query_term(term: str) -> str:
    """One term of a search as the index holds it: each CJK run as its pairs of neighbouring
    characters (one character alone stays as it is), the rest of the term beside them."""
    words = []
    for piece, cjk in _pieces(term):
        if cjk and len(piece) > 1:
            words.extend(a + b for a, b in zip(piece, piece[1:], strict=False))
        else:
            words.append(piece)
    return " ".join(words)


def cjk_query(query: str, operator: str = "and") -> str | PlainText | Or:
    """``query`` as a model with CJK_FIELD is searched: unchanged without CJK letters,
    else each CJK run as its pairs, all of which must match. With the "or" operator each
    term of the query, a single one too, is one alternative, its pairs all required."""
    terms = query.split()
    if not any(_CJK_RUN.search(term) for term in terms):
        return query
    segmented = [cjk_query_term(term) for term in terms]
    segmented = [term for term in segmented if term]
    if not segmented:
        return query
    if operator.lower() == "or":
        # Each term's pieces stay required together, or 東京都 would find 京都 alone.
        alternatives = [PlainText(term, operator="and") for term in segmented]
        return alternatives[0] if len(alternatives) == 1 else Or(alternatives)
    return " ".join(segmented)
