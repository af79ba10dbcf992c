"""bench/deep_retrieval.py's grid and size options (the full run is cut to a time budget through them)."""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "bench"))  # the script imports bench/common.py as `common`
    try:
        spec = importlib.util.spec_from_file_location("bench_deep_retrieval", REPO / "bench" / "deep_retrieval.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_defaults_are_the_full_grid(bench):
    args = bench.options([])
    assert args.tt_grid == [(3e-3, 10, 0), (3e-3, 20, 0), (1e-3, 20, 256), (3e-3, 20, 256), (3e-3, 40, 256)]
    assert args.dr_schedules == [(3e-3, 10), (3e-3, 20)]
    assert args.dr_shapes == [(2, 1), (2, 3), (3, 1), (3, 3)]
    assert args.dr_alphas == [1e-3, 1e-2, 1e-1] and args.scaling_alphas == [1e-3, 1e-2, 1e-1]
    assert args.beams == [10, 20, 50] and args.seeds == 3 and args.sizes == "10000,100000,1000000"
    assert (args.scaling_examples, args.scaling_epochs) == ([300_000] * 3, 2)
    assert args.dr_em_stop == 0.8 and args.dr_em_explore == 0.0 and args.scaling_explores == [0.0]
    assert args.scaling_batch_size == 1024 and args.scaling_m_steps == 0 and args.scaling_beams == [50]


def test_a_cut_grid_is_parsed_and_quick_overrides_it(bench):
    args = bench.options(["--tt-grid", "0.003:20:0", "--dr-shapes", "2:1,3:3", "--dr-alphas", "0.1",
                          "--beams", "20", "--scaling-examples", "1000", "--scaling-epochs", "0.5"])
    assert args.tt_grid == [(3e-3, 20, 0)] and isinstance(args.tt_grid[0][2], int)
    assert args.dr_shapes == [(2, 1), (3, 3)] and args.dr_alphas == [0.1] and args.beams == [20]
    assert (args.scaling_examples, args.scaling_epochs) == ([1000] * 3, 0.5)
    per_size = bench.options(["--sizes", "10,20", "--scaling-examples", "5,7", "--scaling-explores", "0,0.01"])
    assert per_size.scaling_examples == [5, 7] and per_size.scaling_explores == [0.0, 0.01]
    quick = bench.options(["--quick", "--dr-shapes", "3:3"])
    assert quick.dr_shapes == [(2, 1)] and quick.seeds == 1 and quick.scaling_alphas == [0.01]
    assert quick.scaling_explores == [0.0, 0.01] and quick.scaling_beams == [10, 20]


@pytest.mark.parametrize("argv", [["--tt-grid", "0.003:20"], ["--dr-shapes", "2"], ["--dr-schedules", "a:b"],
                                  ["--dr-alphas", "x"], ["--passes", "2"], ["--tt-grid", ""],
                                  ["--sizes", "10,20", "--scaling-examples", "1,2,3"], ["--scaling-explores", "y"]])
def test_a_malformed_grid_stops_the_run(bench, argv, capsys):
    with pytest.raises(SystemExit):
        bench.options(argv)
    assert "--" in capsys.readouterr().err
