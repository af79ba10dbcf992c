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


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, caplog):
    import logging

    from reprlab import logs

    monkeypatch.setattr(logs, "cpu_flags", lambda: {"avx2", "avx512f"})
    with caplog.at_level(logging.INFO, logger="reprlab"):
        assert logs.resolve_precision("auto", "cpu") == "fp32"
    assert "emulated" in caplog.text
    monkeypatch.setattr(logs, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert logs.resolve_precision("auto", "cpu") == "bf16"
    assert "bf16 native (avx512_bf16)" in logs.machine_summary()
    assert logs.resolve_precision("fp32", "cpu") == "fp32"  # explicit choices are kept
