import json

import numpy as np
import pytest
import soundfile as sf

from app.cli import build_parser, main
from data.manifest import read_manifest


def test_prepare_synthetic_writes_manifests_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "corpus"
    main(["prepare-data", "synthetic", "--out", str(out), "--hours", "0.01", "--speakers", "4",
          "--held-out-speakers", "1", "--dev-fraction", "0.2", "--workers", "1", "--no-flite"])
    printed = capsys.readouterr().out
    assert "synthetic corpus in" in printed and "4 speakers" in printed
    split = {name: read_manifest(out / f"{name}.jsonl") for name in ("train", "dev", "test")}
    assert len({u.speaker for u in split["test"]}) == 1
    assert {u.speaker for u in split["test"]}.isdisjoint(u.speaker for u in split["train"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all"]["utterances"] == sum(len(part) for part in split.values())
    assert summary["all"]["hours"] == pytest.approx(0.01, rel=0.5)
    assert all(sf.info(u.audio_path).samplerate == 24000 for u in split["train"])


def test_prepare_ljspeech_reports_what_it_skipped(tmp_path, capsys):
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    rows = []
    for i in range(4):
        sf.write(root / "wavs" / f"LJ001-000{i}.wav", 0.1 * np.sin(np.arange(22050) / 10), 22050)
        rows.append(f"LJ001-000{i}|Text {i}.|Text {i}.")
    (root / "wavs" / "LJ001-0009.wav").write_bytes(b"not audio")
    rows.append("LJ001-0009|Broken.|Broken.")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    main(["prepare-data", "ljspeech", "--root", str(root), "--out", str(tmp_path / "out"), "--dev-fraction", "0"])
    printed = capsys.readouterr().out
    assert "skipped: 1 unreadable audio" in printed and "LJ001-0009" in printed
    assert len(read_manifest(tmp_path / "out" / "train.jsonl")) == 4


def test_prepare_needs_a_root_for_real_corpora(tmp_path):
    with pytest.raises(SystemExit, match="needs --root"):
        main(["prepare-data", "vctk", "--out", str(tmp_path)])


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "prepare-data" in capsys.readouterr().out
