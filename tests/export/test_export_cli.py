"""`megadrp export` argument and input errors: plain messages and exit code 2, before any heavy work."""
from __future__ import annotations

from megadrp.cli import main


def test_bad_arguments_and_non_checkpoints_are_refused(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "o"), "--max-shard-size", "5GiB"]) == 2
    assert "export.max_shard_size" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "o"), "--push-to-hub", "no-owner"]) == 2
    assert "owner/name" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "is not a megadrp checkpoint" in capsys.readouterr().err
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_9\n")  # a pointer to a deleted checkpoint
    assert main(["export", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "step_9" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
