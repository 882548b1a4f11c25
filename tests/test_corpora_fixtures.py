"""The loaders on tiny fake corpus trees written in tmp_path, one per layout, including the ways files go wrong."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from atfnn.corpora import CorpusReport, Utterance, available, get_loader, load_corpus
from atfnn.corpora.describe import count_table, describe
from atfnn.errors import CorpusError

SAMPLE_RATE = 16000


def wav(path, seconds=0.1):
    """Write `seconds` of low noise as a 16 kHz wav and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).standard_normal(int(SAMPLE_RATE * seconds)) * 0.01
    sf.write(path, noise, SAMPLE_RATE)
    return path


def by_name(report):
    return {u.path.name: u for u in report.utterances}


def skip_reasons(report):
    return {path.rsplit("/", 1)[-1]: reason for path, reason in report.skipped}


# --- registry -------------------------------------------------------------------------------------------------------

def test_unknown_corpus_lists_available_names():
    with pytest.raises(CorpusError, match="Unknown corpus 'nope'; available: abc, casia, emodb") as info:
        get_loader("nope")
    for name in ("iemocap", "manifest", "ravdess", "savee", "synthetic", "tess", "emovo"):
        assert name in str(info.value)
    assert "synthetic" in available()


def test_unknown_option_names_the_accepted_ones(tmp_path):
    with pytest.raises(CorpusError, match="no option scriptd; its options: scripted, merge_excited, check_audio"):
        load_corpus("iemocap", tmp_path, scriptd=True)


def test_missing_and_empty_roots_name_the_layout(tmp_path):
    with pytest.raises(CorpusError, match=r"does-not-exist: casia root not found.*<speaker>/<emotion>/<NNN>\.wav"):
        load_corpus("casia", tmp_path / "does-not-exist")
    with pytest.raises(CorpusError, match=rf"{tmp_path}: no usable ravdess utterances found; expected layout Actor_XX"):
        load_corpus("ravdess", tmp_path)


# --- casia ----------------------------------------------------------------------------------------------------------

def test_casia_distributed_layout_skips_bad_files(tmp_path):
    wav(tmp_path / "liuchanhg" / "angry" / "201.wav")
    (tmp_path / "liuchanhg" / "angry" / "201.lab").write_text("ignored")
    (tmp_path / "liuchanhg" / "angry" / "202.wav").write_bytes(b"")
    (tmp_path / "liuchanhg" / "angry" / "203.wav").write_bytes(b"not a wav file at all")
    wav(tmp_path / "wangzhe" / "bored" / "201.wav")
    report = load_corpus("casia", tmp_path)
    assert [(u.speaker, u.label, u.text, u.gender) for u in report.utterances] == [("liuchanhg", "angry", "201", "F")]
    reasons = {p.split(str(tmp_path))[1]: r for p, r in report.skipped}
    assert reasons["/liuchanhg/angry/202.wav"] == "empty file (0 bytes)"
    assert reasons["/liuchanhg/angry/203.wav"].startswith("unreadable audio")
    assert reasons["/wangzhe/bored/201.wav"].startswith("unknown emotion 'bored'")
    assert len(report.skipped) == 3


def test_check_audio_false_only_reads_file_sizes(tmp_path):
    (tmp_path / "wangzhe" / "sad").mkdir(parents=True)
    (tmp_path / "wangzhe" / "sad" / "210.wav").write_bytes(b"garbage")
    report = load_corpus("casia", tmp_path, check_audio=False)
    assert [u.path.name for u in report.utterances] == ["210.wav"]


def test_casia_flat_layout(tmp_path):
    wav(tmp_path / "angry" / "201-angry-liuchanhg.wav")
    wav(tmp_path / "fear" / "250-fear-zhaozuoxiang.wav")
    wav(tmp_path / "fear" / "203-sad-wangzhe.wav")
    report = load_corpus("casia", tmp_path)
    assert [(u.speaker, u.label, u.text, u.gender) for u in report.utterances] == [
        ("liuchanhg", "angry", "201", "F"), ("ZhaoZuoxiang", "fear", "250", "M")]
    assert "differs from its folder" in skip_reasons(report)["203-sad-wangzhe.wav"]


# --- emodb ----------------------------------------------------------------------------------------------------------

def test_emodb_fake_tree(tmp_path):
    wav(tmp_path / "wav" / "16b10Wb.wav")
    wav(tmp_path / "wav" / "03a01Xa.wav")
    wav(tmp_path / "wav" / "notes.wav")
    report = load_corpus("emodb", tmp_path)
    u = report.utterances[0]
    assert (len(report.utterances), u.speaker, u.label, u.text, u.gender) == (1, "16", "angry", "b10", "F")
    assert skip_reasons(report)["03a01Xa.wav"].startswith("unknown emotion letter 'X'")
    assert "does not follow" in skip_reasons(report)["notes.wav"]


# --- iemocap --------------------------------------------------------------------------------------------------------

EVALUATION_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def evaluation_block(start, utterance, code):
    return (
        f"[{start:.4f} - {start + 1.5:.4f}]\t{utterance}\t{code}\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral state;\t()\nC-E3:\tFrustration;\t(angry)\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"
    )


def iemocap_dialog(release, session, dialog, labels, write_audio=True):
    """One dialogue: its EmoEvaluation file (real format), transcription and one wav per utterance."""
    base = release / f"Session{session}"
    evaluation = base / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    evaluation.parent.mkdir(parents=True, exist_ok=True)
    evaluation.write_text(EVALUATION_HEADER + "".join(
        evaluation_block(2.0 * i, f"{dialog}_{utt}", code) for i, (utt, code) in enumerate(labels.items())))
    transcript = base / "dialog" / "transcriptions" / f"{dialog}.txt"
    transcript.parent.mkdir(parents=True, exist_ok=True)
    transcript.write_text("".join(f"{dialog}_{utt} [000.0000-001.5000]: words of {utt}.\n" for utt in labels))
    if write_audio:
        for utt in labels:
            wav(base / "sentences" / "wav" / dialog / f"{dialog}_{utt}.wav")


@pytest.fixture
def iemocap_parent(tmp_path):
    release = tmp_path / "IEMOCAP_full_release"
    iemocap_dialog(release, 1, "Ses01F_impro01", {
        "F000": "neu", "M000": "ang", "F001": "hap", "M001": "exc", "F002": "fru", "M002": "xxx", "F003": "sad"})
    iemocap_dialog(release, 1, "Ses01F_script01_1", {"F000": "ang", "M000": "hap"})
    iemocap_dialog(release, 2, "Ses02M_impro01", {"M000": "sad", "F000": "neu"})
    iemocap_dialog(release, 2, "Ses02M_impro02", {"M000": "ang"}, write_audio=False)
    # A Mac copy's AppleDouble companion of a label file: binary, and not a label file.
    (release / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07\xff")
    return tmp_path


def test_iemocap_default_is_the_paper_subset(iemocap_parent):
    report = load_corpus("iemocap", iemocap_parent)
    got = {u.path.stem: (u.label, u.speaker, u.session, u.gender) for u in report.utterances}
    assert got == {
        "Ses01F_impro01_F000": ("neutral", "Ses01F", "Ses01", "F"),
        "Ses01F_impro01_M000": ("angry", "Ses01M", "Ses01", "M"),
        "Ses01F_impro01_F001": ("happy", "Ses01F", "Ses01", "F"),
        "Ses01F_impro01_F003": ("sad", "Ses01F", "Ses01", "F"),
        "Ses02M_impro01_M000": ("sad", "Ses02M", "Ses02", "M"),
        "Ses02M_impro01_F000": ("neutral", "Ses02F", "Ses02", "F"),
    }
    reasons = {p.rsplit("/", 1)[-1].removesuffix(".wav"): r for p, r in report.skipped}
    assert set(reasons) == {"Ses01F_impro01_M001", "Ses01F_impro01_F002", "Ses01F_impro01_M002",
                            "Ses01F_script01_1_F000", "Ses01F_script01_1_M000", "Ses02M_impro02_M000"}
    assert reasons["Ses01F_impro01_M001"].startswith("label 'exc' is not one of the selected classes")
    assert reasons["Ses01F_script01_1_F000"].startswith("scripted dialogue")
    assert reasons["Ses02M_impro02_M000"] == "file not found"
    assert by_name(report)["Ses01F_impro01_F000.wav"].text == "words of F000."


def test_iemocap_options_and_release_root(iemocap_parent):
    release = iemocap_parent / "IEMOCAP_full_release"
    merged = load_corpus("iemocap", release, merge_excited=True)
    assert by_name(merged)["Ses01F_impro01_M001.wav"].label == "happy"
    assert len(merged.utterances) == 7
    scripted = load_corpus("iemocap", release, scripted=True)
    assert len(scripted.utterances) == 8
    assert by_name(scripted)["Ses01F_script01_1_F000.wav"].label == "angry"
    assert "Ses01F_impro01_M001.wav" not in by_name(scripted)


def test_iemocap_without_sessions_names_the_layout(tmp_path):
    with pytest.raises(CorpusError, match="no Session1..Session5 folders"):
        load_corpus("iemocap", tmp_path)


# --- ravdess, tess, savee, emovo -------------------------------------------------------------------------------------

def test_ravdess(tmp_path):
    wav(tmp_path / "Actor_01" / "03-01-05-01-01-01-01.wav")
    wav(tmp_path / "Actor_02" / "03-01-03-02-02-01-02.wav")
    wav(tmp_path / "Actor_01" / "03-02-05-01-01-01-01.wav")
    wav(tmp_path / "Actor_01" / "03-01-09-01-01-01-01.wav")
    report = load_corpus("ravdess", tmp_path)
    assert [(u.label, u.speaker, u.gender) for u in report.utterances] == [
        ("angry", "Actor_01", "M"), ("happy", "Actor_02", "F")]
    assert report.utterances[1].text == "Dogs are sitting by the door"
    reasons = skip_reasons(report)
    assert reasons["03-02-05-01-01-01-01.wav"] == "song, not speech"
    assert reasons["03-01-09-01-01-01-01.wav"].startswith("unknown emotion code '09'")


def test_tess(tmp_path):
    wav(tmp_path / "OAF_angry" / "OAF_back_angry.wav")
    wav(tmp_path / "YAF_pleasant_surprised" / "YAF_dog_ps.wav")
    wav(tmp_path / "OAF_neutral" / "OA_bite_neutral.wav")  # misnamed in the distributed set
    wav(tmp_path / "YAF_bored" / "YAF_dog_bored.wav")
    report = load_corpus("tess", tmp_path)
    got = {u.path.name: (u.label, u.speaker, u.text, u.gender) for u in report.utterances}
    assert got == {
        "OAF_back_angry.wav": ("angry", "OAF", "back", "F"),
        "YAF_dog_ps.wav": ("surprise", "YAF", "dog", "F"),
        "OA_bite_neutral.wav": ("neutral", "OAF", "bite", "F"),
    }
    assert skip_reasons(report)["YAF_dog_bored.wav"].startswith("unknown emotion 'bored'")


def test_savee_speaker_folders(tmp_path):
    for name in ("DC/a01.wav", "DC/sa01.wav", "JE/su02.wav", "KL/n30.wav", "XX/a01.wav"):
        wav(tmp_path / name)
    report = load_corpus("savee", tmp_path)
    got = {str(u.path.relative_to(tmp_path)): (u.label, u.speaker, u.gender) for u in report.utterances}
    assert got == {"DC/a01.wav": ("angry", "DC", "M"), "DC/sa01.wav": ("sad", "DC", "M"),
                   "JE/su02.wav": ("surprise", "JE", "M"), "KL/n30.wav": ("neutral", "KL", "M")}
    assert [p.rsplit("/", 2)[-2] for p, _ in report.skipped] == ["XX"]


def test_savee_flat_audiodata(tmp_path):
    for name in ("DC_a01.wav", "KL_sa15.wav", "JK_su03.wav", "JK_x03.wav"):
        wav(tmp_path / "AudioData" / name)
    report = load_corpus("savee", tmp_path)
    assert [(u.label, u.speaker) for u in report.utterances] == [("angry", "DC"), ("surprise", "JK"), ("sad", "KL")]
    assert skip_reasons(report)["JK_x03.wav"].startswith("unknown emotion code 'x'")


def test_emovo(tmp_path):
    wav(tmp_path / "f1" / "gio-f1-b1.wav")
    wav(tmp_path / "m2" / "rab-m2-n5.wav")
    wav(tmp_path / "m3" / "pau-m3-l2.wav")
    wav(tmp_path / "f1" / "xyz-f1-b1.wav")
    report = load_corpus("emovo", tmp_path)
    assert [(u.label, u.speaker, u.gender, u.text) for u in report.utterances] == [
        ("happy", "f1", "F", "b1"), ("angry", "m2", "M", "n5"), ("fear", "m3", "M", "l2")]
    assert skip_reasons(report)["xyz-f1-b1.wav"].startswith("unknown emotion code 'xyz'")


# --- abc and generic manifests --------------------------------------------------------------------------------------

def test_abc_manifest(tmp_path):
    wav(tmp_path / "audio" / "s1_001.wav")
    wav(tmp_path / "audio" / "s2_001.wav")
    wav(tmp_path / "audio" / "s2_002.wav")
    (tmp_path / "abc.csv").write_text(
        "path,label,speaker,gender\n"
        "audio/s1_001.wav,Aggressive,s1,m\n"
        "audio/s2_001.wav,intoxicate,s2,F\n"
        "audio/s2_002.wav,bored,s2,F\n")
    report = load_corpus("abc", tmp_path)
    assert [(u.label, u.speaker, u.gender) for u in report.utterances] == [("aggressive", "s1", "M"),
                                                                           ("intoxicated", "s2", "F")]
    assert skip_reasons(report)["s2_002.wav"].startswith("unknown label 'bored'; expected one of aggressive")
    (tmp_path / "abc.csv").rename(tmp_path / "other.csv")
    assert len(load_corpus("abc", tmp_path, manifest="other.csv").utterances) == 2
    with pytest.raises(CorpusError, match=r"abc\.csv: ABC manifest not found"):
        load_corpus("abc", tmp_path)


def test_manifest_paths_and_missing_files(tmp_path):
    elsewhere = wav(tmp_path / "elsewhere" / "x.wav")
    wav(tmp_path / "data" / "clips" / "a.wav", seconds=0.2)
    (tmp_path / "data" / "manifest.csv").write_text(
        "path,label,speaker,session,gender,text,extra\n"
        "clips/a.wav,calm,spk1,s1,female,hello there,1\n"
        f"{elsewhere},busy,spk2,,,,\n"
        "clips/missing.wav,calm,spk2,,,,\n"
        ",calm,spk2,,,,\n"
        "clips/a.wav,busy,spk9,,,,\n")
    report = load_corpus("manifest", tmp_path / "data")
    assert report.utterances == [
        Utterance(tmp_path / "data" / "clips" / "a.wav", "calm", "spk1", "s1", "F", "hello there"),
        Utterance(elsewhere, "busy", "spk2"),
    ]
    reasons = skip_reasons(report)
    assert reasons["missing.wav"] == "file not found"
    assert reasons["a.wav"] == "path repeats an earlier manifest row"
    assert reasons["manifest.csv:5"] == "manifest line 5: empty path"


def test_manifest_missing_column_names_file_and_columns(tmp_path):
    manifest = tmp_path / "list.tsv"
    manifest.write_text("path\tlabel\tgender\nx.wav\tcalm\tF\n")
    with pytest.raises(CorpusError, match=r"list\.tsv: manifest lacks column\(s\) speaker; found path, label, gender"):
        load_corpus("manifest", manifest)


def test_manifest_tsv_and_sniffed_delimiter(tmp_path):
    wav(tmp_path / "a.wav")
    (tmp_path / "manifest.tsv").write_text("path\tlabel\tspeaker\na.wav\tcalm\ts1\n")
    assert [u.label for u in load_corpus("manifest", tmp_path).utterances] == ["calm"]
    (tmp_path / "list.txt").write_text("path\tlabel\tspeaker\na.wav\tangry, a bit\ts1\n")
    assert [u.label for u in load_corpus("manifest", tmp_path / "list.txt").utterances] == ["angry, a bit"]
    (tmp_path / "manifest.csv").write_text("path,label,speaker\na.wav,calm,s1\n")
    with pytest.raises(CorpusError, match="exactly one of manifest.csv, manifest.tsv.*found manifest.csv and manifest"):
        load_corpus("manifest", tmp_path)


# --- describe -------------------------------------------------------------------------------------------------------

def test_describe_totals_durations_and_skips(tmp_path):
    utterances = [
        Utterance(wav(tmp_path / "a.wav", 0.1), "sad", "B"),
        Utterance(wav(tmp_path / "b.wav", 0.2), "angry", "a"),
        Utterance(wav(tmp_path / "c.wav", 0.3), "sad", "a"),
    ]
    skipped = [(f"/x/{i:02d}.wav", "song, not speech" if i % 2 else "file not found") for i in range(25)]
    report = CorpusReport(utterances, skipped)
    assert count_table(report) == {"angry": {"a": 1, "B": 0}, "sad": {"a": 1, "B": 1}}
    text = describe(report)
    lines = text.splitlines()
    assert lines[0] == "Utterances: 3 (2 speakers, 2 classes)"
    assert [line.split() for line in lines[2:6]] == [
        ["label", "a", "B", "total"], ["angry", "1", "0", "1"], ["sad", "1", "1", "2"], ["total", "2", "1", "3"]]
    assert "Duration: 0.00 h; mean 0.20 s, min 0.10 s, max 0.30 s" in text
    assert "Skipped: 25 files" in text
    assert "13  file not found" in text and "12  song, not speech" in text
    assert "/x/19.wav: song, not speech" in text and "/x/20.wav" not in text
    assert text.rstrip().endswith("... and 5 more")
    assert "Duration" not in describe(report, durations=False)
