"""The crash net: an exception no check foresaw ends as one line naming the bug and where its traceback is, exit 1."""

import re

import pytest

from gatedssl import __version__, cli
from gatedssl.errors import RunStopped, UserError


def _bug(*_args, **_kwargs):
    def deeper():
        raise ZeroDivisionError("the message\nand a second line")

    deeper()


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _logged(line: str) -> str:
    match = re.search(r"the full traceback is in (\S+); please report it$", line)
    assert match, line
    return match.group(1)


@pytest.mark.parametrize(
    "command,argv", [("run_report", ["report", "somewhere", "--out", "r"]), ("run_eval", ["eval", "--checkpoint", "x.pt"])]
)
def test_an_unexpected_exception_is_one_line_and_a_log(monkeypatch, tmp_path, capsys, command, argv):
    monkeypatch.setattr(cli, command, _bug)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code = cli.main(argv)
    line = _one_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith(f"error: gatedssl {__version__} hit a bug (ZeroDivisionError: the message); ")
    log = _logged(line)
    assert log.startswith(str(tmp_path / "gatedssl-crash-")) and log.endswith(".log")
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "in deeper" in text and "ZeroDivisionError: the message" in text


def test_a_pretrain_crash_logs_into_its_run_folder(monkeypatch, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(cli, "run_pretrain", _bug)
    code = cli.main(["pretrain", "--out", str(run)])
    line = _one_line(capsys.readouterr().err)
    assert code == 1
    assert _logged(line) == str(run / "crash.log")
    assert "in deeper" in (run / "crash.log").read_text()


def test_a_pretrain_crash_before_its_folder_exists_logs_to_a_temporary_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "run_pretrain", _bug)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    code = cli.main(["pretrain", "--out", str(tmp_path / "not-yet")])
    assert code == 1
    assert _logged(_one_line(capsys.readouterr().err)).startswith(str(tmp_path / "gatedssl-crash-"))
    assert not (tmp_path / "not-yet").exists()


@pytest.mark.parametrize(
    "raised,code,needle",
    [(UserError("what is wrong; what to do"), 2, "error: what is wrong"), (RunStopped("stopped: resume with --resume", 75), 75, "stopped")],
)
def test_foreseen_errors_keep_their_own_line_and_code(monkeypatch, tmp_path, capsys, raised, code, needle):
    def fail(_args):
        raise raised

    monkeypatch.setattr(cli, "run_report", fail)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert cli.main(["report", "x", "--out", "r"]) == code
    assert _one_line(capsys.readouterr().err).startswith(needle)
    assert not list(tmp_path.glob("gatedssl-crash-*")), "a foreseen error is no bug: no crash log"


def test_the_net_holds_when_the_run_folder_cannot_even_be_looked_at(monkeypatch, tmp_path, capsys):
    """A name too long for the file system makes `is_dir()` raise: the net must still give its one line."""
    monkeypatch.setattr(cli, "run_pretrain", _bug)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert cli.main(["pretrain", "--out", "x" * 300]) == 1
    assert _logged(_one_line(capsys.readouterr().err)).startswith(str(tmp_path / "gatedssl-crash-"))


def test_a_reader_that_stops_reading_is_no_bug(tmp_path):
    """`gatedssl ... | head` or a parent that died: the output pipe closes; no crash.log, no error line, exit 141."""
    import subprocess
    import sys

    code = "import sys; from gatedssl import cli; cli.run_report = lambda a: print('x' * 100000) or 0; sys.exit(cli.main(['report', 'r', '--out', 'o']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "hit a bug" not in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("**/crash.log"))
