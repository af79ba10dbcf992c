"""reprlab: learning, compressing and serving text representations for search and QA."""

from reprlab.errors import ReprlabError

__version__ = "0.1.0"

__all__ = ["ReprlabError", "__version__"]
