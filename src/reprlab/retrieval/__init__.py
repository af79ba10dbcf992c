"""Retrieval: indexes, BM25, metrics, dense retrievers (the shared services) and the training methods
(DPR, ANCE, MDR, semantic hashing). Importing the package registers every index kind in
``reprlab.retrieval.index.INDEX_KINDS`` (the binary kind lives in its own module), so ``Index.load``
reads any index folder. The vector-database kind (``qdrant``) imports its client only when used."""

from reprlab.retrieval import binary, index, qdrant  # noqa: F401  (imported for their registrations)
