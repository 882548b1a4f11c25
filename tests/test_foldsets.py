"""Fold sets stored once: relative uids, a content fingerprint, write-once, both run layouts read and exported."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from atfnn import foldsets
from atfnn.corpora.base import Utterance
from atfnn.errors import ConfigError
from atfnn.config import ProtocolConfig
from atfnn.protocols import make_folds, write_folds
from atfnn.reports import export_run, write_predictions

LABELS = ("angry", "sad")


def utterances(root: Path) -> list[Utterance]:
    return [
        Utterance(path=root / f"s{s}" / label / f"{i}.wav", label=label, speaker=f"s{s}")
        for s in range(3) for label in LABELS for i in range(4)
    ]


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[Utterance]]:
    root = (tmp_path / "data" / "toy").resolve()
    root.mkdir(parents=True)
    return root, utterances(root)


def old_run(run: Path, root: Path, utts: list[Utterance], config_root: str | None = None) -> list:
    """A run directory as written before fold sets: folds/ and predictions with absolute uids."""
    folds = make_folds(utts)
    write_folds(folds, utts, run)
    (run / "config.yaml").write_text(f"corpus:\n  name: toy\n  root: {config_root or root}\n")
    by_uid = {u.uid: u for u in utts}
    for fold in folds:
        rows = [{"uid": uid, "speaker": by_uid[uid].speaker, "label": by_uid[uid].label, "pred": "angry"}
                for uid in fold.test]
        write_predictions(run / "seed-0" / fold.name / "predictions.csv", rows, list(LABELS))
        (run / "seed-0" / fold.name / "done.json").write_text(json.dumps({"fold": fold.name, "seed": 0}))
    (run / "run.json").write_text("{}")
    return folds


def tree_text(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(directory.rglob("*")) if p.is_file())


def test_uids_relative_to_the_corpus_root_and_back(corpus):
    root, utts = corpus
    assert foldsets.relative_uid(utts[0].uid, root) == "s0/angry/0.wav"
    assert foldsets.absolute_uid("s0/angry/0.wav", root) == utts[0].uid
    assert foldsets.relative_uid("s0/angry/0.wav", root) == "s0/angry/0.wav"
    manifest = root / "manifest.csv"
    manifest.write_text("path,label,speaker\n")
    assert foldsets.corpus_base(manifest) == root


def test_uid_base_finds_a_relative_root_recorded_elsewhere():
    uids = ["/elsewhere/shared/data/casia/a/angry/1.wav", "/elsewhere/shared/data/casia/b/sad/2.wav"]
    assert foldsets.uid_base(uids, "../shared/data/casia") == Path("/elsewhere/shared/data/casia")
    with pytest.raises(ConfigError, match="cannot tell the corpus root"):
        foldsets.uid_base(uids, "../shared/data/emodb")


def test_same_folds_share_one_set_and_other_folds_get_another(corpus, tmp_path):
    root, utts = corpus
    first = foldsets.from_folds("toy", make_folds(utts), utts, root)
    moved = [Utterance(tmp_path / "copy" / u.path.relative_to(root), u.label, u.speaker) for u in utts]
    same = foldsets.from_folds("toy", make_folds(moved), moved, tmp_path / "copy")
    other = foldsets.from_folds("toy", make_folds(utts, ProtocolConfig(validation="speaker")), utts, root)
    assert first.id == same.id, "the fingerprint hashes relative uids, not where the corpus lies"
    assert first.id != other.id and first.id.startswith("toy-")


def test_a_fold_set_is_written_once_and_an_edited_one_is_refused(corpus, tmp_path):
    root, utts = corpus
    foldset = foldsets.from_folds("toy", make_folds(utts), utts, root)
    store = tmp_path / "store"
    path = foldsets.write_foldset(foldset, store)
    test_file = path / "s0" / "test.jsonl"
    before = test_file.stat().st_mtime_ns
    assert foldsets.write_foldset(foldset, store) == path and test_file.stat().st_mtime_ns == before
    assert foldsets.read_foldset(path) == foldset
    assert str(root) not in tree_text(path)
    test_file.write_text(test_file.read_text().replace("s0/", "s9/"))
    with pytest.raises(ConfigError, match="edited"):
        foldsets.write_foldset(foldset, store)


def test_new_run_points_at_its_set_and_reads_back_absolute_uids(corpus, tmp_path):
    root, utts = corpus
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text(f"corpus:\n  name: toy\n  root: {root}\n")
    folds = make_folds(utts)
    path = foldsets.write_run_folds(run, folds, utts, "toy", root)
    assert path.parent == run / "folds"
    assert json.loads((run / foldsets.POINTER).read_text())["foldset"] == path.name
    assert foldsets.read_run_folds(run) == folds
    assert [f["name"] for f in foldsets.fold_summary(run)] == ["s0", "s1", "s2"]


def test_old_run_reads_as_before(corpus, tmp_path):
    root, utts = corpus
    folds = old_run(tmp_path / "old", root, utts)
    assert foldsets.read_run_folds(tmp_path / "old") == folds
    assert foldsets.fold_summary(tmp_path / "old")[0]["counts"]["test"] == 8


def test_export_stores_one_set_for_two_runs_and_keeps_no_machine_path(corpus, tmp_path):
    root, utts = corpus
    old_run(tmp_path / "runs" / "a", root, utts, config_root="../data/toy")
    old_run(tmp_path / "runs" / "b", root, utts)
    results = tmp_path / "results"
    export_run(tmp_path / "runs" / "a", results / "a")
    export_run(tmp_path / "runs" / "b", results / "b")
    sets = sorted((results / "folds").iterdir())
    assert len(sets) == 1, "two runs split the same way share one fold set"
    assert not (results / "a" / "folds").exists()
    assert str(tmp_path) not in tree_text(results / "folds") + tree_text(results / "a")
    assert str(root) not in tree_text(results / "b" / "seed-0"), "an absolute corpus.root stays in config.yaml only"
    rows = (results / "a" / "seed-0" / "s1" / "predictions.csv").read_text().splitlines()
    assert rows[1].startswith("s1/angry/0.wav,s1,angry,angry")
    assert foldsets.foldset_path(results / "a") == sets[0]
    export_run(tmp_path / "runs" / "b", results / "baselines" / "b")
    assert sorted((results / "folds").iterdir()) == sets and not (results / "baselines" / "folds").exists()
    assert foldsets.foldset_path(results / "baselines" / "b") == sets[0], "results/baselines/<run> shares the store"


def test_a_pointer_to_a_missing_set_names_where_it_looked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / foldsets.POINTER).write_text(json.dumps({"foldset": "toy-000000000000"}))
    with pytest.raises(ConfigError, match="toy-000000000000"):
        foldsets.fold_summary(run)


def test_migration_script_moves_old_runs_to_the_shared_store_once(corpus, tmp_path, capsys):
    from conftest import load_script

    script = load_script("scripts/migrate_results.py")
    root, utts = corpus
    results = tmp_path / "results"
    folds = old_run(results / "a", root, utts, config_root="../data/toy")
    old_run(results / "baselines" / "b", root, utts, config_root="../data/toy")
    assert script.absolute_paths(results), "the fixture names absolute paths, as results/ did"
    assert script.main([str(results)]) == 0
    assert not (results / "a" / "folds").exists() and not (results / "baselines" / "b" / "folds").exists()
    assert len(list((results / "folds").iterdir())) == 1
    assert script.absolute_paths(results) == []
    assert foldsets.read_foldset(foldsets.foldset_path(results / "a")).to_folds(root) == folds
    assert script.main([str(results)]) == 0 and "0 run(s) migrated" in capsys.readouterr().out


def test_a_run_resumed_in_place_reuses_the_shared_set(corpus, tmp_path):
    root, utts = corpus
    old_run(tmp_path / "runs" / "a", root, utts)
    export_run(tmp_path / "runs" / "a", tmp_path / "results" / "a")
    shared = foldsets.foldset_path(tmp_path / "results" / "a")
    found = foldsets.write_run_folds(tmp_path / "results" / "a", make_folds(utts), utts, "toy", root)
    assert found == shared and not (tmp_path / "results" / "a" / "folds").exists()
    other = foldsets.write_run_folds(tmp_path / "results" / "a", make_folds(utts, ProtocolConfig(validation="speaker")), utts, "toy", root)
    assert other.parent == tmp_path / "results" / "a" / "folds", "other folds get their own set"
    assert foldsets.foldset_path(tmp_path / "results" / "a") == other
