"""PII scrubbing: each type's true positives, the look-alikes it must leave alone, the NER hook."""

from __future__ import annotations

import sys
import types

import pytest

from alignlab.data.cleaning import CleaningConfig, clean
from alignlab.data.pii import PIIScrubber, PIISettings, PIIType, find_pii, iban_valid, load_ner, luhn_valid
from alignlab.errors import ConfigError, DataError

scrub = PIIScrubber(PIISettings())


def _scrubbed(text: str) -> str:
    return scrub(text)[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("write to jane.doe+news@mail.example.co.uk today", "write to <EMAIL> today"),
        ("call +1 (555) 123-4567 now", "call <PHONE> now"),
        ("call 555-123-4567.", "call <PHONE>."),
        ("call (555) 123-4567", "call <PHONE>"),
        ("call 1-800-555-0199", "call <PHONE>"),
        ("London: +44 20 7946 0958", "London: <PHONE>"),
        ("London: 020 7946 0958", "London: <PHONE>"),
        ("Paris: 06 12 34 56 78", "Paris: <PHONE>"),
        ("mobile +4915112345678", "mobile <PHONE>"),
        ("(tel. 555.123.4567)", "(tel. <PHONE>)"),
        ("card 4111 1111 1111 1111 exp 12/29", "card <CREDIT_CARD> exp 12/29"),
        ("card 4111-1111-1111-1111", "card <CREDIT_CARD>"),
        ("amex 378282246310005", "amex <CREDIT_CARD>"),
        ("server 192.168.1.10 is down", "server <IP_ADDRESS> is down"),
        ("ipv6 2001:db8::8a2e:370:7334 and ::1", "ipv6 <IP_ADDRESS> and <IP_ADDRESS>"),
        ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN <IBAN>."),
        ("IBAN GB29NWBK60161331926819", "IBAN <IBAN>"),
    ],
)
def test_true_positives_get_typed_placeholders(text, expected):
    assert _scrubbed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2023-10-12, see 12.10.2023 and 12/10/2023.",  # dates
        "Upgrade to version 10.0.19041.1234 or v1.2.3.",  # version numbers
        "pi is 3.14159265358979 and e is 2.718281828",
        "ISBN 978-3-16-148410-0",
        "Order 5551234567 shipped; invoice 20231012.",  # bare digit runs: ids, not phones
        "card 4111 1111 1111 1112 and 4111111111111112",  # 16 digits failing Luhn
        "bad IBAN DE89 3704 0044 0532 0130 01 here",  # mod-97 fails
        "GB00 NWBK 6016 1331 9268 19",  # wrong check digits
        "999.1.2.3 is no address, 12:30:45 is a time",
        "C++: std::vector and a::b; dead::beef",
        "score 10:30, ratio 1:2:3, +5 points, $1,234,567.89",
        "user@localhost is not a routable address",
    ],
)
def test_tricky_negatives_stay(text):
    assert _scrubbed(text) == text


def test_checksums():
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")
    assert luhn_valid("79927398713") and not luhn_valid("7")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and iban_valid("gb29nwbk60161331926819")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89 3704 0044 0532 0130 0")  # Germany: 22 characters
    assert not iban_valid("hello world")


def test_counts_by_type_and_type_selection():
    text = "a@b.io, c@d.io, 192.168.0.1 and 4111111111111111"
    assert scrub(text)[1] == {"email": 2, "ip_address": 1, "credit_card": 1}
    only_email = PIIScrubber(PIISettings(types=[PIIType.EMAIL]))
    assert only_email(text)[0] == "<EMAIL>, <EMAIL>, 192.168.0.1 and 4111111111111111"
    assert [label for _, _, label in find_pii(text)] == ["email", "email", "ip_address", "credit_card"]


def _names_ner(text: str) -> list[tuple[int, int, str]]:
    """A stand-in NER model: finds the names Alice and Bob."""
    spans = []
    for name in ("Alice", "Bob"):
        start = text.find(name)
        if start >= 0:
            spans.append((start, start + len(name), "PERSON"))
    return spans


@pytest.fixture
def ner_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("fake_ner_for_tests")
    module.names = _names_ner  # type: ignore[attr-defined]
    module.broken = lambda text: [(0, len(text) + 5, "X")]  # type: ignore[attr-defined]
    module.not_callable = 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_ner_for_tests", module)
    return "fake_ner_for_tests"


def test_ner_hook_from_an_import_path(ner_module: str):
    scrubber = PIIScrubber(PIISettings(ner=f"{ner_module}:names"))
    assert scrubber("Alice (alice@x.org) met Bob.") == (
        "<PERSON> (<EMAIL>) met <PERSON>.",
        {"email": 1, "person": 2},
    )
    assert load_ner(f"{ner_module}.names") is _names_ner
    config = CleaningConfig(steps=["pii"], pii=PIISettings(ner=f"{ner_module}:names"))
    kept, report = clean(
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi, I am Alice"},
                    {"role": "assistant", "content": "Hi"},
                ]
            }
        ],
        config,
    )
    assert kept[0]["messages"][0]["content"] == "Hi, I am <PERSON>"
    assert report.steps[0].reasons == {"person": 1}


def test_ner_hook_errors_are_explained(ner_module: str):
    with pytest.raises(ConfigError, match="cannot import 'no_such_module:f'"):
        load_ner("no_such_module:f")
    with pytest.raises(ConfigError, match="not callable"):
        load_ner(f"{ner_module}:not_callable")
    with pytest.raises(DataError, match="outside a text of 5 characters"):
        PIIScrubber(PIISettings(ner=f"{ner_module}:broken"))("hello")
