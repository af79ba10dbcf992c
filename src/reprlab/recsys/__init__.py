"""Recommendation: Deep Retrieval (Gao et al., ICLR 2021 submission / CIKM 2021) and its baselines.

* :mod:`reprlab.recsys.data`: interaction readers (MovieLens-100k, any ``user item rating timestamp``
  file) and the leave-last-out protocol every result here uses.
* :mod:`reprlab.recsys.deep_retrieval`: the structure model, the multi-path loss, beam search and the
  reranker; :mod:`reprlab.recsys.path_mapping`: the item -> path mapping and its EM (M-step) with the
  size penalty; :mod:`reprlab.recsys.recipe`: ``reprlab train deep-retrieval`` and the model folder that
  ``reprlab recommend`` serves.
* :mod:`reprlab.recsys.two_tower`, :mod:`reprlab.recsys.baselines`: brute-force two-tower, popularity,
  FAISS IVF, and ``implicit``'s ALS/BPR (the ``recsys`` extra); :mod:`reprlab.recsys.synthetic`: a
  catalogue from a known latent model for the scaling benchmark.
"""
