"""The texts of PAS: what the teacher is asked, what the critic is asked, and what the PAS model is trained on.

The rules follow the Baichuan Alignment report (§2.3) and the PAS paper (2407.06027, §3): a complement
*supplements* the prompt and never answers it, does not extend the user's intent, adds style constraints for
writing tasks, states a method rather than details, about 30 words, in the prompt's language. The critic returns
JSON ``{"reason": ..., "ok": "yes"|"no", "complement": ...}`` and rejects complements that drift from or conflict
with the intent, pile extras onto a complex prompt, answer the prompt, demand too much or switch language.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

Messages = List[Dict[str, str]]

#: the fixed instruction of the PAS model's user turn (training and inference use the very same text)
ENHANCER_INSTRUCTION = (
    "You are a prompt enhancer. Read the user's prompt below and write complementary information for it: "
    "the requirements a good response should meet, optional extensions of the user's intent, and format "
    "constraints, in about 30 words and in the prompt's language. Do not answer the prompt.")
COMPLEMENT_SLOT = "Complementary information:"

GENERATION_RULES = """\
You help a chat assistant answer better by writing a short complement that will be appended to a user's prompt.
Rules:
1. Supplement, never answer: do not solve, answer or partially answer the prompt.
2. Do not extend the user's intent: add no new tasks, topics or goals the user did not ask for.
3. For writing tasks, add style constraints (tone, audience, structure, length).
4. Give the method, not the details: say how a good response should proceed, not what it should contain.
5. About 30 words, at most {max_words}; write in the prompt's language; prefer what people find most helpful.
6. For a complex prompt add little; never demand more than the user could reasonably expect.
Reply with the complement text only: no preamble, no quotes, no label."""

CRITIQUE_RULES = """\
You review a complement written to be appended to a user's prompt. A good complement supplements the prompt \
with response requirements, optional intent extensions and format constraints, in about 30 words.
Reject it ("ok": "no") if it drifts from or conflicts with the user's intent, piles extra demands onto a complex \
prompt, answers the prompt instead of supplementing it, demands too much, or is written in another language \
than the prompt. When you reject it, write a corrected complement that follows these rules.
Reply with one JSON object and nothing else:
{"reason": "<one sentence>", "ok": "yes" or "no", "complement": "<the complement to use>"}"""


@dataclass(frozen=True)
class GoldenPair:
    """A hand-written (prompt, complement) example; ``category`` picks the few-shot set of a prompt."""

    prompt: str
    complement: str
    category: Optional[str] = None


def generation_messages(prompt: str, examples: Sequence[GoldenPair], max_words: int) -> Messages:
    """The teacher's request: the rules as system turn, golden pairs as earlier turns, then the prompt."""
    msgs: Messages = [{"role": "system", "content": GENERATION_RULES.format(max_words=max_words)}]
    for ex in examples:
        msgs.append({"role": "user", "content": _generation_user(ex.prompt)})
        msgs.append({"role": "assistant", "content": ex.complement})
    msgs.append({"role": "user", "content": _generation_user(prompt)})
    return msgs


def _generation_user(prompt: str) -> str:
    return f"User prompt:\n{prompt}\n\nWrite the complement."


def critique_messages(prompt: str, complement: str) -> Messages:
    """The critic's request for one (prompt, complement) pair."""
    user = f"User prompt:\n{prompt}\n\nComplement:\n{complement}\n\nJudge the complement; reply with the JSON object."
    return [{"role": "system", "content": CRITIQUE_RULES}, {"role": "user", "content": user}]


def enhancer_user_turn(prompt: str) -> str:
    """The PAS model's user turn (training format of the PAS paper: instruction, prompt, empty complement slot)."""
    return f"{ENHANCER_INSTRUCTION}\n\nUser prompt:\n{prompt}\n\n{COMPLEMENT_SLOT}"


def training_messages(prompt: str, complement: str) -> Messages:
    """One SFT conversation: the enhancer turn and the complement as the assistant's answer."""
    return [{"role": "user", "content": enhancer_user_turn(prompt)}, {"role": "assistant", "content": complement}]


def append_complement(prompt: str, complement: str) -> str:
    """The augmented prompt the main model sees: the unchanged prompt, then the complement."""
    return f"{prompt}\n\n{complement}" if complement else prompt


# -- replies ----------------------------------------------------------------------------------------------
_LABEL = re.compile(r"^\s*(complementary information|complement)\s*:\s*", re.IGNORECASE)


def clean_complement(reply: str) -> str:
    """A teacher reply as a complement: whitespace collapsed, a leading label and wrapping quotes removed."""
    text = _LABEL.sub("", reply.strip())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return " ".join(text.split())


def complement_problem(text: str, max_words: int) -> Optional[str]:
    """Why a cleaned complement is unusable (``empty`` / ``too_long``), or None when it is fine."""
    if not text:
        return "empty"
    if len(text.split()) > max_words:
        return "too_long"
    return None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    complement: str


_YES = {"yes", "y", "true", "ok", "pass", "1"}
_NO = {"no", "n", "false", "reject", "fail", "0"}


def parse_verdict(reply: str) -> Optional[Verdict]:
    """The critic's JSON verdict (the first JSON object in the reply, code fences allowed); None when the reply
    has no object with a yes/no ``ok`` (an unparsable reply, counted and asked again)."""
    for start in [m.start() for m in re.finditer(r"\{", reply)]:
        try:
            obj, _ = json.JSONDecoder().raw_decode(reply[start:])
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        ok = obj.get("ok")
        ok = str(ok).strip().lower() if isinstance(ok, (str, bool, int)) else None
        if ok in _YES or ok in _NO:
            comp = obj.get("complement")
            return Verdict(ok in _YES, str(obj.get("reason", "")), comp if isinstance(comp, str) else "")
    return None
