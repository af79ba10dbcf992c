"""JAKET benchmark: link prediction on WN18RR, entity categories of held-out WN18RR entities, and few-shot
relation types on UMLS, a KG the model never saw.

Stages (each cached in --work-dir, so a rerun skips what is done):

1. ``vectors``: MiniLM's description vectors of both KGs in one pass: the mean-pooled output of layer
   ``--lm1-layers`` (LM1, JAKET's memory) and of the last layer (LM-only); written as the recipe's
   memory cache too.
2. ``pretrain``: ``reprlab pretrain jaket`` on WN18RR (its glosses linked to their neighbours, WordNet
   lexnames as categories) for ``--steps`` steps.
3. ``link``: WN18RR filtered MRR / Hits on test: pykeen TransE, DistMult, RotatE (time-boxed); the
   description vectors with no graph (text only); the knowledge module fresh; the module from JAKET.
4. ``category``: linear probes of categories on held-out entities: LM-only vectors, LM1 vectors,
   a fresh module, JAKET's module (3 seeds).
5. ``relation``: UMLS relation types from 1, 5, 20 labelled triples per relation (3 seeds): JAKET,
   the same LM1 with a fresh module, pykeen models trained on those triples.

    flock /tmp/reprlab-heavy.lock nice -n 5 python bench/jaket.py            # full run
    python bench/jaket.py --quick                                          # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from reprlab.text.kg import KnowledgeGraph, read_kg  # noqa: E402

logger = logging.getLogger("reprlab")
SEEDS = (0, 1, 2)
SHOTS = (1, 5, 20)
PUBLISHED = {  # WN18RR test MRR as published
    "TransE": (0.226, "Sun et al. 2019, RotatE paper (ICLR), Table 5 (TransE re-run by the authors)"),
    "DistMult": (0.43, "Dettmers et al. 2018, ConvE paper (AAAI), Table 5"),
    "RotatE": (0.476, "Sun et al. 2019, RotatE paper (ICLR), Table 5"),
}


def options(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[common.bench_options(work_dir="runs/bench-jaket")],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wn18rr", type=Path, default=common.data_path("wn18rr_text", check=False))
    p.add_argument("--umls", type=Path, default=common.data_path("umls_text", check=False))
    p.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet database (apt-get install wordnet-base)")
    p.add_argument("--lm1-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="JAKET pre-training steps")
    p.add_argument("--link-steps", type=int, default=150, help="link-prediction fine-tuning steps per variant")
    p.add_argument("--pykeen-minutes", type=float, default=4.0, help="training time of each pykeen model on WN18RR")
    p.add_argument("--stages", nargs="+", default=["vectors", "pretrain", "link", "category", "relation"])
    return common.parse(p, argv)


# ----------------------------------------------------------------------------- stage 1: description vectors


@torch.no_grad()
def encode_layers(texts: list[str], layers: tuple[int, ...], max_length: int = 32, batch_size: int = 128):
    """MiniLM's mean-pooled output of each of ``layers`` for ``texts`` (one pass): {layer: (N, H)}."""
    from reprlab.encoder import Encoder
    from reprlab.logs import progress
    from reprlab.text.tokenizer import Tokenizer

    enc, tok = Encoder.from_pretrained("minilm").eval(), Tokenizer.from_pretrained("minilm")
    out = {k: torch.zeros(len(texts), enc.config.hidden_size) for k in layers}
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for s in progress(range(0, len(texts), batch_size), desc="encode", unit="batch"):
        idx = torch.as_tensor(order[s:s + batch_size])
        b = tok([texts[i] for i in idx], max_length=max_length)
        hs = enc(b.input_ids, b.attention_mask, output_hidden_states=True).hidden_states
        m = b.attention_mask.unsqueeze(-1).float()
        for k in layers:
            out[k][idx] = (hs[k] * m).sum(1) / m.sum(1)
    return out


def vectors_stage(name: str, kg: KnowledgeGraph, args) -> dict:
    """{"lm1": (ents, rels), "lm": (ents, rels)} for ``kg``, cached; also the recipe's memory cache file."""
    from safetensors.torch import load_file, save_file

    path = args.work_dir / f"vectors-{name}.safetensors"
    if not path.is_file():
        t0 = time.time()
        L = 6
        ents = encode_layers(kg.entity_text, (args.lm1_layers, L))
        rels = encode_layers(kg.relation_text, (args.lm1_layers, L))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"lm1_entities": ents[args.lm1_layers], "lm1_relations": rels[args.lm1_layers],
                   "lm_entities": ents[L], "lm_relations": rels[L]}, str(path),
                  metadata={"digest": kg.digest(), "seconds": f"{time.time() - t0:.1f}"})
    v = load_file(str(path))
    return {"lm1": (v["lm1_entities"], v["lm1_relations"]), "lm": (v["lm_entities"], v["lm_relations"])}


def write_memory_cache(path: Path, kg: KnowledgeGraph, vectors, args) -> None:
    from safetensors.torch import save_file

    from reprlab.hub import resolve_model_path

    key = {"model": str(resolve_model_path("minilm")), "lm1_layers": str(args.lm1_layers), "desc_max_length": "32",
           "texts_sha256": kg.digest()}
    save_file({"entities": vectors[0].contiguous(), "relations": vectors[1].contiguous()}, str(path), metadata=key)


def main(argv=None) -> None:
    args = options(argv)
    wn = read_kg(common.require(args.wn18rr))
    umls = read_kg(common.require(args.umls), "entity2textlong.txt")
    if "vectors" in args.stages:
        vectors_stage("umls", umls, args)
        vectors_stage("wn18rr", wn, args)


if __name__ == "__main__":
    main()
