"""Why language models help downstream tasks: natural tasks, conditional-mean features, Quad.

Saunshi, Malladi, Arora, "A Mathematical Exploration of Why Language Models Help Solve Downstream
Tasks", ICLR 2021 (arXiv 2010.03648). No official code was released.

The paper's three claims, and where each is tested here:

1. A classification task that is linear in the true next-word distribution p*(.|s) (a *natural*
   task, typically after a prompt such as "This movie is") is solved linearly, with error
   O(sqrt(epsilon)), by the features of an LM whose cross-entropy is epsilon above the optimum.
2. The features to use are the *conditional mean* Phi p_f(s), the expected output word embedding
   under the LM's prediction (f(s) itself carries no such guarantee).
3. The Quad objective -f(s)^T phi_w + 1/2 ||Phi^T f(s)||^2 (:mod:`reprlab.nn.quad`, and
   ``reprlab pretrain mlm --loss quad``) gives the guarantee on f(s) itself.

Modules:

* :mod:`.features`: f(s), p_f(s) on a word subset, Phi p_f(s) at the ``[MASK]`` of a prompt
  template, from any masked LM (encoder + MLM head) passed in; held-out masked-LM cross-entropy;
  zero-shot labels from class words.
* :mod:`.probe`: L2 logistic-regression probes (torch L-BFGS), L2 chosen on a dev split.
* :mod:`.synthetic`: an HMM language where p* and epsilon are exact, natural tasks built on it, GRU
  LMs trained with cross-entropy or Quad, the error-vs-epsilon experiment and its power-law fit.

The benchmark ``bench/natural_tasks.py`` runs all of it on the synthetic world, SST-2 and AG News.
"""

from reprlab.analysis.natural_tasks.features import (
    DISTRIBUTIONS,
    FEATURES,
    NO_PROMPT,
    PromptTemplate,
    conditional_mean,
    extract_features,
    head_features,
    masked_lm_cross_entropy,
    next_word_distribution,
    prediction_inputs,
    word_ids,
    zero_shot,
)
from reprlab.analysis.natural_tasks.probe import L2_GRID, LinearProbe, select_probe
from reprlab.analysis.natural_tasks.synthetic import (
    HMMWorld,
    NaturalTask,
    OracleLM,
    SyntheticConfig,
    SyntheticLM,
    fit_power,
    kl_epsilon,
    lm_epsilon,
    natural_task,
    run_synthetic,
    train_lm,
)

__all__ = [
    "DISTRIBUTIONS", "FEATURES", "L2_GRID", "NO_PROMPT", "HMMWorld", "LinearProbe", "NaturalTask", "OracleLM",
    "PromptTemplate", "SyntheticConfig", "SyntheticLM", "conditional_mean", "extract_features", "fit_power",
    "head_features", "kl_epsilon", "lm_epsilon", "masked_lm_cross_entropy", "natural_task", "next_word_distribution",
    "prediction_inputs", "run_synthetic", "select_probe", "train_lm", "word_ids", "zero_shot",
]
