"""PII detection and masking (stage 4): typed placeholders for emails, phone numbers, IP
addresses, credit cards (Luhn-checked), IBANs (mod-97-checked), US SSNs and secrets.

Detectors are regular expressions with validators; where two detections overlap, the one found
by the earlier detector in `KINDS` wins (an IBAN is never also a phone number), then the longer.
Entity names follow Presidio's (`EMAIL_ADDRESS`, `PHONE_NUMBER`, ...), plus `SECRET`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

KINDS = ("SECRET", "EMAIL_ADDRESS", "IBAN_CODE", "CREDIT_CARD", "US_SSN", "IP_ADDRESS",
         "PHONE_NUMBER")


@dataclass(frozen=True)
class PIISpan:
    start: int
    end: int
    kind: str


# --- validators -------------------------------------------------------------------------------

def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = re.sub(r"[\s-]", "", candidate).upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


# --- detectors --------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{2,4}){3,8}(?![A-Za-z0-9])")
_CARD = re.compile(r"(?<![\d.,+-])\d(?:[ -]?\d){11,18}(?![\d]|[.,]\d)")
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_IPV4 = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\d]|\.\d)"
)
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|"
                   r"(?:\d{1,3}\.){3}\d{1,3})?(?![0-9A-Fa-f:])")
_PHONE = re.compile(
    r"(?<![\w.+/=*^${}%\\-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,15}(?:[ .-]\d{1,8}){0,5}"
    r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?(?![\w:=*^${}/%\\]|[.,-]\d)"
)
_ISO_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{4}$")
_SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}(?![A-Za-z0-9])"),
    re.compile(r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"),
    re.compile(r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}"),
    re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?<![A-Za-z0-9_])(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),
    re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}"),
    re.compile(r"(?<![A-Za-z0-9_-])hf_[A-Za-z0-9]{30,}"),
    re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
]
# Literal substrings without which each pattern cannot match (a cheap pre-check).
_PATTERN_HINTS = [("-----BEGIN",), ("AKIA", "ASIA", "AGPA", "AIDA", "AROA"), ("gh",),
                  ("github_pat_",), ("xox",), ("_live_", "_test_"), ("sk-",), ("AIza",),
                  ("hf_",), ("eyJ",)]
# `api_key = "..."`, `password: ...`, `Authorization: Bearer ...`: the value is the secret.
_SECRET_ASSIGN = re.compile(
    r"(?i)(?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|"
    r"client[_-]?secret|private[_-]?key|password|passwd|pwd|bearer)"
    r"[\"']?\s*(?:[:=]|=>|\s)\s*[\"']?([A-Za-z0-9_\-./+=!@#$%^&*]{8,200})"
)


_ASSIGN_HINTS = ("key", "secret", "token", "passw", "pwd", "bearer")


def _find_secrets(text: str) -> Iterable[tuple[int, int]]:
    for pattern, hint in zip(_SECRET_PATTERNS, _PATTERN_HINTS):
        if any(h in text for h in hint):
            for m in pattern.finditer(text):
                yield m.start(), m.end()
    low = text.lower()
    if not any(h in low for h in _ASSIGN_HINTS):
        return
    for m in _SECRET_ASSIGN.finditer(text):
        value = m.group(1)
        # A secret has letters and digits (or is long); "password is changed" is not one.
        has_digit = any(c.isdigit() for c in value)
        has_alpha = any(c.isalpha() for c in value)
        if (has_digit and has_alpha) or len(value) >= 20:
            yield m.start(1), m.end(1)


def _find_emails(text: str) -> Iterable[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end()


def _find_ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        if iban_ok(m.group()):
            yield m.start(), m.end()
            continue
        # The greedy groups may have eaten a following word: retry shorter prefixes.
        s = m.group()
        for cut in range(len(s) - 1, 14, -1):
            if s[cut - 1].isalnum() and (cut == len(s) or not s[cut].isalnum()) \
                    and iban_ok(s[:cut]):
                yield m.start(), m.start() + cut
                break


def _find_cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 12 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
            yield m.start(), m.end()


def _find_ssns(text: str) -> Iterable[tuple[int, int]]:
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        yield m.start(), m.end()


def _find_ips(text: str) -> Iterable[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        yield m.start(), m.end()
    if ":" not in text:
        return
    for m in _IPV6.finditer(text):
        s = m.group()
        if s.count(":") < 2 or not any(c.isalnum() for c in s):
            continue
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue
        # "12:30:45"-style times are not valid IPv6; "::" with nothing else is not an address.
        yield m.start(), m.end()


def _phone_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", re.split(r"(?i)\s?(?:x|ext)", s)[0])
    if not 7 <= len(digits) <= 15:
        return False
    if _ISO_DATE.match(s) or re.match(r"\d{4}-\d\d-\d\d\b", s):
        return False
    plus = s.startswith("+")
    paren = "(" in s
    body = re.sub(r"^\+\d{1,3}[ .-]?", "", s) if plus else s
    groups = re.findall(r"\d+", re.split(r"(?i)\s?(?:x|ext)", body)[0])
    seps = set(re.findall(r"[ .-]", body))
    if "." in seps and (" " in seps or "-" in seps):
        return False  # "12.5 13.5", "14.00-1.903": decimals
    if not plus and not paren:
        if len(groups) == 1:
            return len(digits) >= 10  # a bare number: only a full national number
        if seps == {" "} and max(len(g) for g in groups) <= 2:
            return False  # "12 14 16 18": a list of small numbers
        if len(groups) == 2 and seps == {"."}:
            return False  # a decimal number
        if len(groups) == 2 and seps == {"-"} and max(len(g) for g in groups) <= 4 \
                and not groups[0].startswith("0") and int(groups[1]) > int(groups[0]):
            return False  # "1851-2004", "540-2830": a range
        if seps == {" "} and len(groups) >= 4 and len({len(g) for g in groups}) == 1:
            return False  # "100 120 140 160": a table row
    return True


def _find_phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        s = m.group().rstrip(" .-")
        if _phone_ok(s):
            yield m.start(), m.start() + len(s)


_DETECTORS: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "SECRET": _find_secrets,
    "EMAIL_ADDRESS": _find_emails,
    "IBAN_CODE": _find_ibans,
    "CREDIT_CARD": _find_cards,
    "US_SSN": _find_ssns,
    "IP_ADDRESS": _find_ips,
    "PHONE_NUMBER": _find_phones,
}


def detect(text: str, kinds: Iterable[str] = KINDS) -> list[PIISpan]:
    """Non-overlapping PII spans in `text`, sorted by start."""
    wanted = set(kinds)
    taken: list[PIISpan] = []
    for kind in KINDS:
        if kind not in wanted:
            continue
        found = sorted(set(_DETECTORS[kind](text)), key=lambda se: (se[0], -(se[1] - se[0])))
        for start, end in found:
            if end <= start:
                continue
            if any(start < t.end and t.start < end for t in taken):
                continue
            taken.append(PIISpan(start, end, kind))
    return sorted(taken, key=lambda s: s.start)


def mask(text: str, kinds: Iterable[str] = KINDS, placeholder: str = "<{kind}>"
         ) -> tuple[str, list[PIISpan]]:
    """`text` with every detected span replaced by its placeholder, and the spans found."""
    spans = detect(text, kinds)
    if not spans:
        return text, spans
    out, pos = [], 0
    for s in spans:
        out.append(text[pos:s.start])
        out.append(placeholder.format(kind=s.kind))
        pos = s.end
    out.append(text[pos:])
    return "".join(out), spans
