"""Compression: knowledge distillation (plain KD, CKD, SEED), students from teachers, approximate computing.

One method per file: ``kd.py`` (embedding and score distillation), ``ckd.py`` (contextual knowledge
distillation), ``seed.py`` (self-supervised distillation over a queue; ``image.py`` holds a small CNN
for images), ``approx.py`` (AxFormer's accuracy-driven pruning with physical removal),
``students.py`` (students by layer selection or from a smaller config) and ``recipe.py``
(``run_distillation`` for ``reprlab distill kd|ckd|seed``).
"""

from reprlab.distill.approx import (  # noqa: F401
    ApproxConfig,
    ApproxPlan,
    ApproxRecipeConfig,
    apply_plan,
    run_approx,
    search_plan,
)
from reprlab.distill.ckd import CKDConfig, ckd_loss  # noqa: F401
from reprlab.distill.kd import KDConfig, KDLoss, embedding_cosine, embedding_mse, score_distillation  # noqa: F401
from reprlab.distill.recipe import METHODS, DistillConfig, run_distillation  # noqa: F401
from reprlab.distill.seed import SEED, SEEDConfig, seed_loss  # noqa: F401
from reprlab.distill.students import build_student, student_from_config, student_from_layers  # noqa: F401
