"""The loaders on the real corpora in ../shared/data (skipped when absent, failing when ATFNN_REQUIRE_CORPORA=1)."""
from __future__ import annotations

from collections import Counter

import pytest

from atfnn.corpora import casia, emodb, load_corpus
from atfnn.corpora.describe import count_table, describe

pytestmark = pytest.mark.corpus

CASIA_SPEAKERS = {"liuchanhg", "wangzhe", "zhaoquanyin", "ZhaoZuoxiang"}
EMODB_COUNTS = {"angry": 127, "bored": 81, "disgust": 46, "fear": 69, "happy": 71, "sad": 62, "neutral": 79}
EMODB_SPEAKERS = {"03", "08", "09", "10", "11", "12", "13", "14", "15", "16"}


def test_casia_has_1200_balanced_utterances(casia_root):
    report = load_corpus("casia", casia_root)
    assert len(report.utterances) == 1200
    assert report.skipped == []
    table = count_table(report)
    assert tuple(table) == casia.LABELS
    assert all(set(row) == CASIA_SPEAKERS and set(row.values()) == {50} for row in table.values())


def test_casia_fields(casia_root):
    utterances = load_corpus("casia", casia_root).utterances
    assert [str(u.path) for u in utterances] == sorted(str(u.path) for u in utterances)
    assert len({u.uid for u in utterances}) == 1200
    assert {u.text for u in utterances} == {str(n) for n in range(201, 251)}
    genders = {u.speaker: u.gender for u in utterances}
    assert sorted(genders.values()) == ["F", "F", "M", "M"]
    assert all(u.path.is_absolute() and u.path.suffix == ".wav" for u in utterances)
    first = utterances[0]
    assert first.path.parent.name == first.label and first.path.parent.parent.name == first.speaker


def test_emodb_has_the_documented_counts(emodb_root):
    report = load_corpus("emodb", emodb_root)
    assert len(report.utterances) == 535
    assert report.skipped == []
    assert Counter(u.label for u in report.utterances) == EMODB_COUNTS
    assert {u.speaker for u in report.utterances} == EMODB_SPEAKERS
    assert set(EMODB_COUNTS) == set(emodb.LABELS)


def test_emodb_fields(emodb_root):
    utterances = load_corpus("emodb", emodb_root).utterances
    by_name = {u.path.name: u for u in utterances}
    u = by_name["03a01Fa.wav"]
    assert (u.speaker, u.label, u.text, u.gender) == ("03", "happy", "a01", "M")
    genders = {u.speaker: u.gender for u in utterances}
    assert {s for s, g in genders.items() if g == "F"} == {"08", "09", "13", "14", "16"}
    assert {s for s, g in genders.items() if g == "M"} == {"03", "10", "11", "12", "15"}


def test_emodb_root_may_be_the_wav_folder(emodb_root):
    assert len(load_corpus("emodb", emodb_root / "wav").utterances) == 535


def test_describe_casia_totals(casia_root):
    text = describe(load_corpus("casia", casia_root))
    assert "Utterances: 1200 (4 speakers, 6 classes)" in text
    total_row = next(line for line in text.splitlines() if line.startswith("total"))
    assert total_row.split() == ["total", "300", "300", "300", "300", "1200"]
    assert "Duration: 0.64 h" in text
    assert "Skipped: none" in text
