"""ANCE: dense-retrieval training with negatives from an asynchronously refreshed ANN index.

Xiong et al., "Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text
Retrieval", ICLR 2021 (microsoft/ANCE). Negatives are sampled from the top ``top_k`` (200 in the
paper) of an ANN index of the *whole corpus* encoded by a recent checkpoint of the model being
trained, so they stay hard as the model improves. The index is rebuilt asynchronously: while the
trainer keeps stepping, a refresher encodes the corpus with the newest checkpoint and publishes a
new index version; the trainer switches to it at its next step.

How reprlab runs it (no second job started by hand, no folder polled with sleep):

* The trainer starts the refresher itself: a child process (rank 0 under DDP) that waits on a
  request queue. Every ``refresh_every`` steps the trainer saves its weights and sends a request;
  if a refresh is still running, the request is sent as soon as it finishes, with the newest weights.
* The refresher encodes the corpus, builds a FAISS index, retrieves ``top_k`` documents for every
  training query, evaluates the dev queries, and publishes ``ance/index-vNNNN/`` atomically (the
  folder appears complete or not at all), then reports on a result queue.
* The trainer takes finished versions from the result queue without blocking and switches to the
  newest; under DDP rank 0 broadcasts the version so every rank switches at the same step.
* Each refresh is logged to ``ance_refresh.jsonl``: version, the step of the weights it used, the
  step at which the trainer switched (staleness = the difference), encode time, dev metrics.
* The ranking of the version in use is part of the checkpoint, so ``resume`` restores step, optimizer
  and negatives. ``refresh_mode="sync"`` waits for each refresh instead of training on: two runs of a
  config, and a killed run and its resumption, are then bit-for-bit equal (the default ``"async"``
  is the paper's and is not). The refresher dies with its trainer (no orphans after ``kill -9``).

Losses: ``softmax`` (NLL over in-batch positives + ANCE negatives, as DPR) or ``pairwise``
(the paper's NLL of the positive against each negative).
"""

from reprlab.retrieval.ance.recipe import AnceCollate, AnceConfig, AnceResult, ance_loss, run_ance
from reprlab.retrieval.ance.refresher import REFRESH_MODES, AnceNegatives, IndexRefresher, RefreshJob

__all__ = ["REFRESH_MODES", "AnceCollate", "AnceConfig", "AnceNegatives", "AnceResult", "IndexRefresher",
           "RefreshJob", "ance_loss", "run_ance"]
