"""Retrieval: index, BM25, metrics, dense retrievers and their training methods."""
