"""Pre-training objectives: the masking engine (random, whole-word, span, PMI, fully-explored), MLM and
CMLM recipes on the shared training loop, and DEMI's decomposed contrastive bound.

``MASKING`` is the registry of masking schemes (its keys are the CLI's ``--masking`` choices).
"""

from reprlab.pretrain.masking import MASKING, MaskingConfig, build_masking, register_masking

__all__ = ["MASKING", "MaskingConfig", "build_masking", "register_masking"]
