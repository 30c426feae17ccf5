"""The run folder names every file once; the modules that write them use those names."""
import os

from tfawd.core.run_dir import RunDir


def test_every_file_of_a_run_folder_has_one_name():
    run = RunDir("/runs/x")
    assert (run.ckpt, run.best, run.tb, run.vocab, run.results, run.lock) == (
        "/runs/x/ckpt", "/runs/x/best", "/runs/x/tb", "/runs/x/vocab.txt",
        "/runs/x/results.json", "/runs/x/.lock")
    assert run.finetune.vocab == "/runs/x/finetune/vocab.txt"
    assert os.fspath(run) == "/runs/x"


def test_a_trained_run_holds_the_files_it_names(tiny_corpus, tmp_path):
    from tests.test_training import tiny_cfg
    from tfawd.lm.training import train
    train(tiny_cfg(tmp_path / "run", max_epochs=1), tiny_corpus)
    run = RunDir(str(tmp_path / "run"))
    for path in (run.ckpt, run.best, run.tb, run.flags, run.vocab, run.history, run.commands,
                 run.results, run.loss_curve):
        assert os.path.exists(path), path
    assert not os.path.exists(run.lock) or os.path.getsize(run.lock) == 0  # released
