import os

import torch

from reprlab.logs import machine_summary, progress_enabled


def test_machine_summary_names_cores_accelerator_and_torch():
    line = machine_summary()
    assert f"{os.cpu_count()} cores" in line
    assert f"torch {torch.__version__} ({torch.get_num_threads()} threads)" in line
    assert ("no GPU" in line) != torch.cuda.is_available()


def test_progress_is_off_on_other_ranks(monkeypatch):
    assert progress_enabled(True)
    monkeypatch.setenv("RANK", "1")
    assert not progress_enabled(True)
