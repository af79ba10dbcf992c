"""Every training recipe, registered: importing this module fills :data:`reprlab.train.recipe.RECIPES`.

A recipe registers itself with ``@register("GROUP NAME", Config, help=...)`` next to its run function
(see :mod:`reprlab.train.recipe`); this list names the modules that hold recipes, so that the CLI (and
anything else that wants them all) sees every one. Adding a method means adding its module here;
nothing in the CLI changes.
"""

from __future__ import annotations

from reprlab.analysis import image_classifier  # noqa: F401  train image-classifier
from reprlab.distill import approx, recipe as distill_recipe  # noqa: F401  distill kd|ckd|seed, compress approx
from reprlab.pretrain import cmlm, jaket, mlm  # noqa: F401  pretrain mlm|cmlm|jaket
from reprlab.qa import long_reader, recipe as qa_recipe  # noqa: F401  train reader|long-reader
from reprlab.qa.fid import recipe as fid_recipe  # noqa: F401  train fid
from reprlab.recsys import recipe as recsys_recipe  # noqa: F401  train deep-retrieval
from reprlab.retrieval import ance, dpr, hashing, mdr  # noqa: F401  train dpr|ance|hashing|mdr
from reprlab.retrieval.reader_distill import recipe as reader_distill_recipe  # noqa: F401  train reader-distill
from reprlab.train.recipe import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe", "groups"]


def groups() -> dict[str, list[Recipe]]:
    """The registered recipes by command group (``train``, ``pretrain``, ``distill``, ``compress``), sorted."""
    out: dict[str, list[Recipe]] = {}
    for command in sorted(RECIPES):
        out.setdefault(RECIPES[command].group, []).append(RECIPES[command])
    return out
