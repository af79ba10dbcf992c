"""Building blocks, one paper per file. Importing the package registers every attention variant
in ``ATTENTION`` and every pooling in ``POOLING``, so the registries are complete whenever
``reprlab.encoder`` is imported."""

# imported for their registrations
from reprlab.nn import attention, cluster, collaborative, hire, memory, pooling, synthesizer  # noqa: F401
from reprlab.nn.attention import ATTENTION, register_attention
from reprlab.nn.pooling import POOLING, build_pooling

__all__ = ["ATTENTION", "POOLING", "build_pooling", "register_attention"]
