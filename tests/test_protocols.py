"""Speaker-independent folds: disjoint, complete, deterministic, stratified, and readable on disk."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest

from atfnn.corpora.base import Utterance
from atfnn.errors import ConfigError
from atfnn.config import ProtocolConfig
from atfnn.protocols import Fold, inner_folds, make_folds, read_folds, select_folds, write_folds

LABELS = ("angry", "happy", "neutral", "sad")


def corpus(n_speakers: int = 6, per_label: int = 10, sessions: bool = True) -> list[Utterance]:
    """Speakers s0..s{n-1}, two per session, `per_label` utterances of each label."""
    return [
        Utterance(
            path=Path(f"/c/s{s}/{label}_{i:02d}.wav"),
            label=label,
            speaker=f"s{s}",
            session=f"Ses{s // 2 + 1}" if sessions else None,
        )
        for s in range(n_speakers)
        for label in LABELS
        for i in range(per_label)
    ]


UTTS = corpus()
BY_UID = {u.uid: u for u in UTTS}
CASES = [(p, v) for p in ("loso", "loso_session") for v in ("utterances", "speaker")]


def folds_of(utterances, protocol: str = "loso", **options) -> list[Fold]:
    """make_folds with the protocol's fields as keywords (protocol = ProtocolConfig.kind)."""
    return make_folds(utterances, ProtocolConfig(kind=protocol, **options))


def speakers(uids) -> set[str]:
    return {BY_UID[uid].speaker for uid in uids}


@pytest.mark.parametrize("protocol,validation", CASES)
def test_folds_are_speaker_disjoint_and_complete(protocol, validation):
    folds = folds_of(UTTS, protocol=protocol, validation=validation)
    assert len(folds) == (6 if protocol == "loso" else 3)
    all_uids = sorted(u.uid for u in UTTS)
    for fold in folds:
        parts = fold.train + fold.validation + fold.test
        assert sorted(parts) == all_uids  # every utterance exactly once
        assert fold.train and fold.validation and fold.test
        test_speakers = speakers(fold.test)
        assert not test_speakers & speakers(fold.train)
        assert not test_speakers & speakers(fold.validation)
        if validation == "speaker":
            assert len(speakers(fold.validation)) == 1
            assert not speakers(fold.validation) & speakers(fold.train)


def test_loso_names_and_test_sets():
    folds = folds_of(UTTS)
    assert [f.name for f in folds] == [f"s{i}" for i in range(6)]
    assert all(speakers(f.test) == {f.name} for f in folds)


def test_loso_session_holds_out_both_speakers_of_a_session():
    folds = folds_of(UTTS, protocol="loso_session")
    assert [f.name for f in folds] == ["Ses1", "Ses2", "Ses3"]
    assert speakers(folds[1].test) == {"s2", "s3"}


@pytest.mark.parametrize("protocol,validation", CASES)
def test_deterministic_and_independent_of_input_order(protocol, validation):
    shuffled = UTTS[:]
    random.Random(1).shuffle(shuffled)
    first = folds_of(UTTS, protocol=protocol, validation=validation, seed=3)
    assert folds_of(shuffled, protocol=protocol, validation=validation, seed=3) == first
    assert folds_of(UTTS, protocol=protocol, validation=validation, seed=3) == first


def test_seed_changes_the_validation_split():
    assert folds_of(UTTS, seed=0) != folds_of(UTTS, seed=1)


def test_utterance_validation_is_stratified_over_speakers_and_labels():
    folds = folds_of(UTTS, val_fraction=0.1)
    for fold in folds:
        pool = len(fold.train) + len(fold.validation)
        assert len(fold.validation) == pytest.approx(0.1 * pool, abs=2)
        train_speakers = speakers(fold.train)
        assert speakers(fold.validation) == train_speakers  # every training speaker is in validation
        assert {BY_UID[uid].label for uid in fold.validation} == set(LABELS)


def test_every_training_speaker_in_validation_even_when_tiny():
    # One utterance per (speaker, label): 10% of a stratum rounds to nothing, but each speaker still gets one,
    # each from a different class so that training keeps every class (no warning).
    small = corpus(n_speakers=4, per_label=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = folds_of(small, val_fraction=0.1)
    by_uid = {u.uid: u for u in small}
    for fold in folds:
        train_speakers = {by_uid[uid].speaker for uid in fold.train + fold.validation}
        assert {by_uid[uid].speaker for uid in fold.validation} == train_speakers
        assert len({by_uid[uid].label for uid in fold.validation}) == len(fold.validation)


def test_val_fraction_is_respected_for_larger_fractions():
    for fraction in (0.2, 0.3):
        for fold in folds_of(UTTS, val_fraction=fraction):
            pool = len(fold.train) + len(fold.validation)
            assert len(fold.validation) == pytest.approx(fraction * pool, abs=2)


def test_speaker_validation_with_two_speakers_is_an_error():
    with pytest.raises(ConfigError, match="validation='utterances'"):
        folds_of(corpus(n_speakers=2), validation="speaker")


def test_loso_session_without_sessions_is_an_error():
    with pytest.raises(ConfigError, match="session"):
        folds_of(corpus(sessions=False), protocol="loso_session")


def test_loso_session_rejects_a_speaker_in_two_sessions():
    utts = UTTS + [Utterance(Path("/c/extra.wav"), "sad", "s0", session="Ses3")]
    with pytest.raises(ConfigError, match="'s0'"):
        folds_of(utts, protocol="loso_session")


def test_fewer_than_two_speakers_is_an_error():
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        folds_of(corpus(n_speakers=1))


def test_bad_options_are_errors():
    with pytest.raises(ConfigError, match="loso, loso_session"):
        folds_of(UTTS, protocol="lopo")
    with pytest.raises(ConfigError, match="utterances, speaker"):
        folds_of(UTTS, validation="none")
    with pytest.raises(ConfigError, match="val_fraction"):
        folds_of(UTTS, val_fraction=1.0)
    with pytest.raises(ConfigError, match="more than once"):
        folds_of(UTTS + UTTS[:1])


def test_missing_class_in_training_warns():
    # Only s0 has "sad": its fold trains without "sad".
    utts = [u for u in UTTS if u.label != "sad" or u.speaker == "s0"]
    with pytest.warns(UserWarning, match=r"fold 's0'.*'sad'"):
        folds_of(utts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds_of(UTTS)  # every class in every fold: no warning


def test_select_folds():
    folds = folds_of(UTTS)
    assert select_folds(folds, None) == folds
    assert [f.name for f in select_folds(folds, ["s3", "s1"])] == ["s1", "s3"]
    with pytest.raises(ConfigError, match=r"available: s0, s1.*did you mean 's1'"):
        select_folds(folds, ["S1"])
    with pytest.raises(ConfigError, match="Unknown fold 'x9'"):
        select_folds(folds, ["x9"])
    with pytest.raises(ConfigError, match="no fold selected"):
        select_folds(folds, [])


def test_write_read_round_trip(tmp_path):
    folds = folds_of(UTTS, protocol="loso_session")
    write_folds(folds, UTTS, tmp_path)
    assert read_folds(tmp_path) == folds
    lines = (tmp_path / "folds" / "Ses2" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"uid", "label", "speaker", "session"}
    assert first["session"] == "Ses2"
    assert len(lines) == len(folds[1].test)
    summary = json.loads((tmp_path / "folds" / "folds.json").read_text(encoding="utf-8"))
    assert [f["name"] for f in summary["folds"]] == ["Ses1", "Ses2", "Ses3"]
    assert summary["folds"][1]["speakers"]["test"] == ["s2", "s3"]


def test_read_folds_detects_missing_and_edited_files(tmp_path):
    with pytest.raises(ConfigError, match="folds.json"):
        read_folds(tmp_path)
    folds = folds_of(UTTS)
    write_folds(folds, UTTS, tmp_path)
    test_file = tmp_path / "folds" / "s0" / "test.jsonl"
    test_file.write_text("\n".join(test_file.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(ConfigError, match="test.jsonl"):
        read_folds(tmp_path)


def test_write_folds_needs_every_uid(tmp_path):
    fold = Fold("s0", train=("/nowhere.wav",), validation=(), test=())
    with pytest.raises(ConfigError, match="/nowhere.wav"):
        write_folds([fold], UTTS, tmp_path)


def test_make_folds_without_a_protocol_uses_the_defaults():
    assert make_folds(UTTS) == make_folds(UTTS, ProtocolConfig())


@pytest.mark.parametrize("protocol", ["loso", "loso_session"])
def test_inner_loso_folds_train_on_every_training_utterance_and_never_see_the_test_speaker(protocol):
    for fold in folds_of(UTTS, protocol, selection="inner-loso"):
        assert fold.validation == (), "inner-loso chooses its epochs on inner folds, not on a validation split"
        assert sorted(fold.train + fold.test) == sorted(u.uid for u in UTTS)
        inner = inner_folds(fold, BY_UID)
        assert [f.name for f in inner] == sorted(speakers(fold.train))
        for f in inner:
            assert speakers(f.validation) == {f.name} and f.name not in speakers(f.train)
            assert sorted(f.train + f.validation) == sorted(fold.train)
            assert not set(f.train + f.validation) & set(fold.test) and f.test == ()


def test_inner_loso_needs_two_training_speakers():
    fold = folds_of(corpus(n_speakers=2), selection="inner-loso")[0]
    with pytest.raises(ConfigError, match="protocol.selection=split"):
        inner_folds(fold, {u.uid: u for u in corpus(n_speakers=2)})
