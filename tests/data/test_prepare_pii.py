"""PII masking: recall on Presidio's synthetic dataset, validators, secrets, and no damage to
clean STEM prose."""

from __future__ import annotations

import json

import pytest

from megatron_rlpt.data.pii import detect, iban_ok, luhn_ok, mask

TYPES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE", "US_SSN"]


def _covers(span, start: int, end: int) -> bool:
    return span.start <= start and span.end >= end


def test_recall_on_presidio_synthetic_dataset(shared_data):
    records = json.loads((shared_data / "pii/presidio_research/synth_dataset_v2.json")
                         .read_text(encoding="utf-8"))
    found = {t: 0 for t in TYPES}
    total = {t: 0 for t in TYPES}
    detected = {t: 0 for t in TYPES}
    correct = {t: 0 for t in TYPES}
    for r in records:
        text, gold = r["full_text"], [g for g in r["spans"] if g["entity_type"] in TYPES]
        spans = detect(text)
        for g in gold:
            total[g["entity_type"]] += 1
            if any(s.kind == g["entity_type"] and _covers(s, g["start_position"],
                                                          g["end_position"]) for s in spans):
                found[g["entity_type"]] += 1
        for s in spans:
            if s.kind not in TYPES:
                continue
            detected[s.kind] += 1
            if any(g["entity_type"] == s.kind and s.start < g["end_position"]
                   and g["start_position"] < s.end for g in gold):
                correct[s.kind] += 1
    report = {t: {"recall": round(found[t] / total[t], 3),
                  "precision": round(correct[t] / max(detected[t], 1), 3),
                  "spans": total[t]} for t in TYPES}
    print("\nPII on presidio synth_dataset_v2:", json.dumps(report, indent=1))
    for t in TYPES:
        assert total[t] > 0
        assert found[t] / total[t] >= 0.95, (t, report[t])


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB83WEST12345698765432")


@pytest.mark.parametrize("text,kind", [
    ("mail me at jane.doe+x@example.co.uk today", "EMAIL_ADDRESS"),
    ("call +1 (555) 010-4477 now", "PHONE_NUMBER"),
    ("card 4111 1111 1111 1111 ok", "CREDIT_CARD"),
    ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN_CODE"),
    ("SSN 123-45-6789", "US_SSN"),
    ("host 192.168.10.254 up", "IP_ADDRESS"),
    ("v6 2001:db8::ff00:42:8329 up", "IP_ADDRESS"),
    ("key AKIAIOSFODNN7EXAMPLE here", "SECRET"),
    ("token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB", "SECRET"),
    ('api_key = "9f8e7d6c5b4a39281706"', "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "SECRET"),
])
def test_each_kind_is_masked_with_its_placeholder(text, kind):
    masked, spans = mask(text)
    assert [s.kind for s in spans] == [kind]
    assert f"<{kind}>" in masked


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",
    "the version 1.2.3.4.5 is not an address",
    "the interval 1851-2004 and pages 1578-1580",
    "pH = 14.00-1.903 = 12.10 and 0.10-0.0011 = 0.099",
    "data: 12 14 16 18 20 and 100 120 140 160",
    "at 12:30:45 the password is changed",
])
def test_lookalikes_are_left_alone(text):
    assert mask(text)[1] == []


def test_invalid_ssn_is_not_an_ssn():
    assert "US_SSN" not in [s.kind for s in detect("SSN-like 000-12-3456 has a zero area")]


def test_clean_stem_prose_is_untouched(shared_data):
    masked = 0
    with open(shared_data / "corpus/openstax_chemistry_2e.jsonl", encoding="utf-8") as f:
        for line in f:
            masked += len(detect(json.loads(line)["text"]))
    assert masked <= 2
