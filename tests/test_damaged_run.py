"""A damaged run folder (issue 27): training resumes from the newest checkpoint that reads
whole, bit-exactly, and says which one it skipped; with none left it stops with one line."""
import glob
import os

import numpy as np
import pytest

from tests.test_training import _weights, tiny_cfg
from tfawd.core.run_guard import RunError
from tfawd.lm.training import open_run


def _data_files(run):
    return sorted(glob.glob(os.path.join(run, "ckpt", "ckpt-*.data-*")),
                  key=lambda p: int(p.split("ckpt-")[1].split(".")[0]))


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_bit_exactly(
        tiny_corpus, tmp_path, capsys, damage):
    straight = open_run(tiny_cfg(tmp_path / "a", max_steps=30), tiny_corpus)
    straight.run()
    first = open_run(tiny_cfg(tmp_path / "b", max_steps=16, checkpoint_every=7), tiny_corpus)
    first.run()  # checkpoints at 7, 14 and 16 (the stop)
    del first
    newest = _data_files(tmp_path / "b")[-1]
    assert "ckpt-16." in newest
    if damage == "truncate":
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) // 2)
    elif damage == "delete":
        os.remove(newest)
    else:
        with open(newest, "r+b") as f:
            f.seek(0)
            f.write(os.urandom(os.path.getsize(newest)))
    capsys.readouterr()
    resumed = open_run(tiny_cfg(tmp_path / "b", max_steps=30, checkpoint_every=7), tiny_corpus)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert int(resumed.state.step) == 14
    assert len(warnings) == 1 and "ckpt-16" in warnings[0]
    assert all(h["step"] <= 14 for h in resumed.history)
    resumed.run()
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_readable_checkpoint_stops_with_one_line_naming_the_folder(tiny_corpus, tmp_path):
    open_run(tiny_cfg(tmp_path / "run", max_steps=10, checkpoint_every=4), tiny_corpus).run()
    for path in _data_files(tmp_path / "run"):
        with open(path, "r+b") as f:
            f.truncate(3)
    with pytest.raises(RunError) as err:
        open_run(tiny_cfg(tmp_path / "run", max_steps=20), tiny_corpus)
    message = str(err.value)
    assert "\n" not in message and os.path.join(str(tmp_path / "run"), "ckpt") in message


def test_a_killed_writer_leaves_the_previous_version_whole(tmp_path):
    """A process killed in the middle of writing a run file: the old file is still there,
    whole (the new one was being written under a temporary name)."""
    import signal
    import subprocess
    import sys
    import textwrap
    path = tmp_path / "history.json"
    path.write_text('{"old": true}\n')
    code = textwrap.dedent(f"""
        import time
        from tfawd.core import files
        with files.replaced({str(path)!r}) as f:
            f.write('{{"new": ')
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
            f.write('true}}')
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_text() == '{"old": true}\n'


def test_a_full_disk_while_writing_a_run_file_is_one_line_and_keeps_the_old_file(
        tmp_path, monkeypatch):
    import builtins
    import errno

    from tfawd.core import files

    path = tmp_path / "results.json"
    files.write_json(str(path), {"old": 1})

    class Full:
        def __init__(self, *a, **k):
            self.f = builtins.open(*a, **k)

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files, "open", Full, raising=False)
    with pytest.raises(files.DiskFull) as err:
        files.write_json(str(path), {"new": 2})
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    monkeypatch.undo()
    assert files.read_json(str(path)) == {"old": 1}
    assert os.listdir(tmp_path) == ["results.json"]  # no temporary file left behind


def _mount_tmpfs(folder, size):
    import subprocess
    os.makedirs(folder, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_a_disk_that_fills_up_mid_run_stops_with_one_line_and_resumes_bit_exactly(
        tiny_corpus, tmp_path):
    """A run folder on a small filesystem (tmpfs): the disk fills up after the first
    checkpoints, the run stops with DiskFull naming what it could not write; once space is
    freed, the same command resumes from the last whole checkpoint, bit-exactly."""
    import subprocess
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("mounting a tmpfs needs root (CI and the dev machines run as root)")
    try:
        run = disk / "run"
        straight = open_run(tiny_cfg(tmp_path / "a", max_steps=30), tiny_corpus)
        straight.run()
        open_run(tiny_cfg(run, max_steps=14, checkpoint_every=7), tiny_corpus).run()
        filler = disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        with pytest.raises(RunError) as err:
            open_run(tiny_cfg(run, max_steps=30, checkpoint_every=7), tiny_corpus).run()
        assert "no space left" in str(err.value) and "\n" not in str(err.value)
        os.remove(filler)
        resumed = open_run(tiny_cfg(run, max_steps=30, checkpoint_every=7), tiny_corpus)
        assert int(resumed.state.step) == 14
        resumed.run()
        for a, b in zip(_weights(straight), _weights(resumed), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
