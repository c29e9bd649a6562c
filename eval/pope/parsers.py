"""The yes/no answer rules of the upstream POPE evaluators, selectable by name.

The same model outputs score differently under each rule (docs: evaluators.md §1.5),
so a results file always names the rule it used. A rule maps (answer, gold label) to
one confusion cell: ``"tp"``, ``"fp"``, ``"tn"``, ``"fn"``, or ``"other"`` for answers a
rule neither counts as yes nor as no (only the exact-match rule has those).
"""

from __future__ import annotations

from collections.abc import Callable

Cell = str  # "tp" | "fp" | "tn" | "fn" | "other"


def _cell(pred: str, gold: str) -> Cell:
    if pred == "yes":
        return "tp" if gold == "yes" else "fp"
    return "fn" if gold == "yes" else "tn"


def official_prediction(answer: str) -> str:
    """POPE/LLaVA rule: "no" iff a token of the first sentence is ``No``, ``not`` or ``no``.

    Re-implements RUCAIBox/POPE ``3df3ba1b`` ``evaluate.py`` (the same rule as LLaVA
    ``c121f043`` ``llava/eval/eval_pope.py``): keep the text before the first ".", drop
    commas, split on single spaces. Every other answer -- empty, "NO", "None",
    "There isn't" -- is "yes"; there is no third class.
    """
    text = answer.split(".", 1)[0] if "." in answer else answer
    tokens = text.replace(",", "").split(" ")
    return "no" if any(t in ("No", "not", "no") for t in tokens) else "yes"


def official(answer: str, gold: str) -> Cell:
    return _cell(official_prediction(answer), gold)


def opera_prediction(answer: str) -> str:
    """OPERA/AvisC rule: "no" iff a token is No/not/no/NO or ends in "n't".

    Re-implements OPERA ``61426efe`` ``pope_eval.py`` (``recorder``): all "." and ","
    are removed from the whole answer before splitting on spaces.
    """
    tokens = answer.replace(".", "").replace(",", "").split(" ")
    neg = any(t in ("No", "not", "no", "NO") or t.endswith("n't") for t in tokens)
    return "no" if neg else "yes"


def opera(answer: str, gold: str) -> Cell:
    return _cell(opera_prediction(answer), gold)


def vcd(answer: str, gold: str) -> Cell:
    """VCD/DAMRO rule: substring test that depends on the gold label.

    Re-implements VCD ``d6568ff8`` ``experiments/eval/eval_pope.py``: lowercase and
    strip; gold "yes" is TP if "yes" occurs anywhere, else FN; gold "no" is TN if "no"
    occurs anywhere (so "not", "know", "cannot" count), else FP.
    """
    a = answer.lower().strip()
    if gold == "yes":
        return "tp" if "yes" in a else "fn"
    return "tn" if "no" in a else "fp"


def lmms(answer: str, gold: str) -> Cell:
    """lmms-eval ``pope`` rule: exact "yes"/"no" after lowercasing and stripping.

    Re-implements lmms-eval ``75571cfe`` ``lmms_eval/tasks/pope/utils.py``: any other
    string ("yes.", "Yes, there is") is wrong for accuracy and left out of precision
    and recall (cell ``"other"``).
    """
    a = answer.lower().strip()
    if a not in ("yes", "no"):
        return "other"
    return _cell(a, gold)


PARSERS: dict[str, Callable[[str, str], Cell]] = {
    "official": official,
    "vcd": vcd,
    "lmms": lmms,
    "opera": opera,
}

PARSER_SOURCES: dict[str, str] = {
    "official": "RUCAIBox/POPE 3df3ba1b evaluate.py = LLaVA c121f043 llava/eval/eval_pope.py",
    "vcd": "DAMO-NLP-SG/VCD d6568ff8 experiments/eval/eval_pope.py (also DAMRO)",
    "lmms": "EvolvingLMMs-Lab/lmms-eval 75571cfe lmms_eval/tasks/pope/utils.py",
    "opera": "shikiw/OPERA 61426efe pope_eval.py (also AvisC)",
}


def get_parser(name: str) -> Callable[[str, str], Cell]:
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown parser {name!r}; available: {', '.join(PARSERS)}") from None
