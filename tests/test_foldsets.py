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


def write_format_1(foldset: foldsets.FoldSet, store: Path) -> Path:
    """A set as written before format 2: each fold's split files in the set's own folder."""
    path = store / foldset.id
    summary = foldset.summary() | {"format": 1}
    summary["folds"] = [{k: v for k, v in entry.items() if k != "files"} for entry in summary["folds"]]
    for name, splits in foldset.folds.items():
        (path / name).mkdir(parents=True)
        for split in foldsets.SPLITS:
            (path / name / f"{split}.jsonl").write_text(foldsets.split_text(splits[split]))
    (path / "folds.json").write_text(json.dumps(summary, indent=2))
    return path


def split_file(path: Path, fold: str, split: str) -> Path:
    entry = next(e for e in json.loads((path / "folds.json").read_text())["folds"] if e["name"] == fold)
    return foldsets.split_files(path, entry, foldsets.FORMAT)[split]


def speaker_folds(utts: list[Utterance], root: Path) -> foldsets.FoldSet:
    """Validation a whole training speaker: with 3 speakers every split is one speaker's utterances."""
    return foldsets.from_folds("toy", make_folds(utts, ProtocolConfig(validation="speaker")), utts, root)


def fold_sets(store: Path) -> list[Path]:
    return sorted(p.parent for p in store.glob("*/folds.json"))


def test_a_fold_set_is_written_once_and_an_edited_one_is_refused(corpus, tmp_path):
    root, utts = corpus
    foldset = foldsets.from_folds("toy", make_folds(utts), utts, root)
    store = tmp_path / "store"
    path = foldsets.write_foldset(foldset, store)
    test_file = split_file(path, "s0", "test")
    before = [p.stat().st_mtime_ns for p in (test_file, path / "folds.json")]
    assert foldsets.write_foldset(foldset, store) == path
    assert [p.stat().st_mtime_ns for p in (test_file, path / "folds.json")] == before, "an existing set is kept"
    assert foldsets.read_foldset(path) == foldset
    assert str(root) not in tree_text(store)
    test_file.write_text(test_file.read_text().replace("s0/", "s9/"))
    with pytest.raises(ConfigError, match=f"{test_file.name}.*edited"):
        foldsets.read_foldset(path)
    with pytest.raises(ConfigError, match="edited"):
        foldsets.write_foldset(foldset, store)


def test_format_2_stores_each_distinct_split_once_and_reads_back_the_same_set(corpus, tmp_path):
    root, utts = corpus
    foldset = speaker_folds(utts, root)
    store = tmp_path / "store"
    path = foldsets.write_foldset(foldset, store)
    assert sorted(p.name for p in path.iterdir()) == ["folds.json"], "the set's folder names its splits, holds none"
    summary = json.loads((path / "folds.json").read_text())
    assert summary["format"] == 2 and summary["fingerprint"] == foldset.fingerprint
    files = sorted((store / "splits").iterdir())
    assert len(files) == 3, "9 splits, each one of the 3 speakers: 3 files"
    assert len({f.read_bytes() for f in files}) == 3
    validation = summary["folds"][0]["files"]["validation"]
    assert validation.startswith("../splits/") and validation in [e["files"]["test"] for e in summary["folds"][1:]]
    back = foldsets.read_foldset(path)
    assert back == foldset and back.fingerprint == foldset.fingerprint
    assert foldsets.set_files(path) == [path / "folds.json", *files]


def test_a_format_1_set_reads_as_the_same_set_and_upgrades_in_place(corpus, tmp_path):
    root, utts = corpus
    foldset = speaker_folds(utts, root)
    store = tmp_path / "store"
    old = write_format_1(foldset, store)
    assert foldsets.read_foldset(old) == foldset
    assert foldsets.write_foldset(foldset, store) == old and (old / "s0" / "test.jsonl").is_file(), "kept as it is"
    assert foldsets.set_files(old)[1] == old / "s0" / "test.jsonl"
    assert foldsets.upgrade_foldset(old) is True
    assert sorted(p.name for p in old.iterdir()) == ["folds.json"] and len(list((store / "splits").iterdir())) == 3
    assert foldsets.read_foldset(old) == foldset and foldsets.upgrade_foldset(old) is False


def test_two_sets_sharing_a_split_share_its_file(corpus, tmp_path):
    root, utts = corpus
    first = foldsets.from_folds("toy", make_folds(utts), utts, root)
    second = speaker_folds(utts, root)
    store = tmp_path / "store"
    a, b = foldsets.write_foldset(first, store), foldsets.write_foldset(second, store)
    assert a != b and split_file(a, "s1", "test") == split_file(b, "s1", "test"), "a speaker's test split, once"
    distinct = {foldsets.split_text(rows) for s in (first, second) for splits in s.folds.values() for rows in splits.values()}
    assert len(list((store / "splits").iterdir())) == len(distinct) < 18
    assert foldsets.read_foldset(a) == first and foldsets.read_foldset(b) == second


def test_a_split_file_of_that_name_with_other_content_is_refused(corpus, tmp_path):
    root, utts = corpus
    store = tmp_path / "store"
    shared = split_file(foldsets.write_foldset(speaker_folds(utts, root), store), "s1", "test")
    shared.write_text(shared.read_text().replace("s1/", "s7/"))
    other = foldsets.from_folds("toy", make_folds(utts), utts, root)
    with pytest.raises(ConfigError, match=f"{shared}: holds other utterances"):
        foldsets.write_foldset(other, store)
    assert not (store / other.id).exists(), "no set names a split file it could not write"


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
    sets = fold_sets(results / "folds")
    assert len(sets) == 1, "two runs split the same way share one fold set"
    assert not (results / "a" / "folds").exists()
    assert str(tmp_path) not in tree_text(results / "folds") + tree_text(results / "a")
    assert str(root) not in tree_text(results / "b" / "seed-0"), "an absolute corpus.root stays in config.yaml only"
    rows = (results / "a" / "seed-0" / "s1" / "predictions.csv").read_text().splitlines()
    assert rows[1].startswith("s1/angry/0.wav,s1,angry,angry")
    assert foldsets.foldset_path(results / "a") == sets[0]
    export_run(tmp_path / "runs" / "b", results / "baselines" / "b")
    assert fold_sets(results / "folds") == sets and not (results / "baselines" / "folds").exists()
    assert foldsets.foldset_path(results / "baselines" / "b") == sets[0], "results/baselines/<run> shares the store"


def test_export_leaves_out_the_logs_of_trainings_that_did_not_finish(corpus, tmp_path):
    root, utts = corpus
    run = tmp_path / "runs" / "a"
    old_run(run, root, utts)
    finished, cut = run / "seed-0" / "s0", run / "seed-1" / "s0"  # seed 1 was stopped in its first fold
    inner_done, inner_cut = finished / "inner" / "s1", finished / "inner" / "s2"
    for directory in (cut, inner_done, inner_cut):
        directory.mkdir(parents=True)
    (inner_done / "curve.json").write_text("{}")
    for directory in (finished, cut, inner_done, inner_cut):
        (directory / "log.csv").write_text("epoch,loss\n1,1.0\n")
    dest = tmp_path / "results" / "a"
    copied = export_run(run, dest)
    logs = {p.parent.relative_to(dest) for p in copied if p.name == "log.csv"}
    assert logs == {Path("seed-0/s0"), Path("seed-0/s0/inner/s1")}
    assert not (dest / "seed-1").exists() and not (dest / "seed-0" / "s0" / "inner" / "s2").exists()


def test_export_into_a_store_that_has_the_split_files_reuses_them(corpus, tmp_path):
    root, utts = corpus
    store = tmp_path / "results" / "folds"
    foldsets.write_foldset(speaker_folds(utts, root), store)  # every speaker's utterances, as one split each
    before = {p: p.stat().st_mtime_ns for p in (store / "splits").iterdir()}
    old_run(tmp_path / "runs" / "a", root, utts)
    copied = export_run(tmp_path / "runs" / "a", tmp_path / "results" / "a")
    (exported,) = [p for p in fold_sets(store) if p.name != speaker_folds(utts, root).id]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "the split files there are not rewritten"
    tests = {split_file(exported, f"s{s}", "test") for s in range(3)}
    assert tests == set(before), "the run's test splits are the files already there"
    assert len(list((store / "splits").iterdir())) == 3 + 6, "and only its train and validation splits are new"
    assert set(foldsets.set_files(exported)) <= set(copied) and tests <= set(copied)
    assert foldsets.read_run_folds(tmp_path / "runs" / "a") == foldsets.read_foldset(exported).to_folds(root)


def test_a_run_whose_own_set_is_format_1_is_exported_in_format_2(corpus, tmp_path):
    root, utts = corpus
    run = tmp_path / "runs" / "a"
    foldset = speaker_folds(utts, root)
    write_format_1(foldset, run / "folds")
    foldsets.write_pointer(run, foldset)
    (run / "config.yaml").write_text(f"corpus:\n  name: toy\n  root: {root}\n")
    export_run(run, tmp_path / "results" / "a")
    (exported,) = fold_sets(tmp_path / "results" / "folds")
    assert exported.name == foldset.id and json.loads((exported / "folds.json").read_text())["format"] == 2
    assert foldsets.read_foldset(exported) == foldset and len(list(exported.parent.glob("splits/*.jsonl"))) == 3


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
    assert len(fold_sets(results / "folds")) == 1
    assert script.absolute_paths(results) == []
    assert foldsets.read_foldset(foldsets.foldset_path(results / "a")).to_folds(root) == folds
    assert script.main([str(results)]) == 0 and "0 run(s) migrated" in capsys.readouterr().out


def test_migration_script_rewrites_format_1_sets_with_each_split_once(corpus, tmp_path, capsys):
    from conftest import load_script

    script = load_script("scripts/migrate_results.py")
    root, utts = corpus
    results = tmp_path / "results"
    store = results / "folds"
    first = foldsets.from_folds("toy", make_folds(utts), utts, root)
    paths = [write_format_1(first, store), write_format_1(speaker_folds(utts, root), store)]
    assert script.duplicate_files(store), "format 1 repeats a speaker's split in folds and sets"
    assert script.main([str(results), "--dry-run"]) == 0 and "would be rewritten" in capsys.readouterr().out
    assert script.main([str(results)]) == 0
    assert script.duplicate_files(store) == [] and fold_sets(store) == sorted(paths)
    assert [p.name for p in store.rglob("*.jsonl") if p.parent.name != "splits"] == []
    assert foldsets.read_foldset(paths[0]) == first, "the same set, under the same fingerprint"
    assert script.main([str(results)]) == 0 and "every fold set is in format 2" in capsys.readouterr().out


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
