"""A-LLMRec: a frozen collaborative model meets a frozen LLM (Kim et al., KDD 2024).

Both pretrained parts stay frozen; only small alignment networks are trained.

* **Stage 1** (eq. 2-6), :class:`Stage1Aligner`: an auto-encoder on the frozen SASRec item
  embeddings ``E_i`` and one on the frozen text embeddings ``Q_i`` of the item text
  (``"Title: ..., Description: ..."`` through a sentence encoder). The two latent codes
  are pulled together by a *matching* MSE ``MSE(e_i, q_i)``; the decoders' reconstruction
  losses keep the codes from collapsing (``e = q = 0`` would match perfectly); a BCE
  *recommendation* loss scores the decoded positive and negative item against the frozen
  SASRec user vector. ``e_i = f_I^enc(E_i)`` is the *joint collaborative-text embedding*;
  ``q_i = f_T^enc(Q_i)`` replaces it for items the CF model has not seen (the "SBERT" variant).
* **Stage 2** (eq. 7-8), :class:`ALLMRec`: two 2-layer MLPs project the SASRec user vector
  and the joint item embeddings to the LM's token width. The projected vectors are *soft
  tokens*: they are written into the prompt's input embeddings at reserved positions
  (:func:`recommendation_prompt` marks them, :func:`prompt_batch` finds their positions). The
  LM reads "[user] is a user representation. This user has watched "t1"[item], ... Recommend
  one next movie ... from the following movie title set, "c1"[item], ... The recommendation
  is "" and is trained, with its weights frozen, to write the next title (loss on the answer
  tokens only). Inference is greedy decoding; the answer is mapped to one of the candidates
  (:func:`map_to_candidates`). ``recutils.pipelines.allmrec.LLMRecommender`` wraps both as
  ``predict(users)`` (one ranked list per user) for the evaluator.

Hyper-parameters live in :class:`Stage1Config` and :class:`ALLMRecConfig` (the paper's
values in the comments; ours are smaller because the LM is small and the CPU slow).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recutils.batching import IGNORE_INDEX, pad_rows
from recutils.data.text import readable_title
from recutils.mapping import nearest_items, normalize_title

# --- stage 1: aligning collaborative and textual item knowledge -------------------------------


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> GELU -> (dropout) -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


def matching_loss(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Eq. 2: mean squared error between the item code ``e`` and the text code ``q``."""
    return F.mse_loss(e, q)


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1's hyper-parameters (eq. 2-6); the paper's values in the comments."""

    latent: int = 128        # d' of the joint embedding e_i (paper: 128)
    hidden: int = 256        # hidden width of each encoder / decoder MLP (paper: one-layer MLPs)
    alpha: float = 0.5       # weight of the item reconstruction loss (paper, Beauty: 0.5)
    beta: float = 0.2        # weight of the text reconstruction loss (paper, Beauty: 0.2)
    matching: bool = True    # keep the matching loss (off: the paper's ablation, Table 6)
    recon: bool = True       # keep both reconstruction losses (off: ablation, Table 6)
    rec: bool = True         # keep the recommendation loss (off: ablation, Table 6)


class Stage1Aligner(nn.Module):
    """Two auto-encoders whose latent spaces are matched (eq. 2-6).

    ``item_dim`` is the CF model's embedding width (SASRec: 50), ``text_dim`` the sentence
    encoder's (MiniLM: 384; SBERT in the paper: 768). The switches ``matching``, ``recon``
    and ``rec`` of the config drop a loss term (the paper's stage-1 ablations, Table 6).
    """

    def __init__(self, item_dim: int, text_dim: int, config: Stage1Config | None = None) -> None:
        super().__init__()
        c = self.config = config or Stage1Config()
        self.item_enc = mlp(item_dim, c.hidden, c.latent)
        self.item_dec = mlp(c.latent, c.hidden, item_dim)
        self.text_enc = mlp(text_dim, c.hidden, c.latent)
        self.text_dec = mlp(c.latent, c.hidden, text_dim)
        self.alpha, self.beta = c.alpha, c.beta
        self.use_matching, self.use_recon, self.use_rec = c.matching, c.recon, c.rec

    def joint(self, item_emb: torch.Tensor) -> torch.Tensor:
        """``e_i = f_I^enc(E_i)``: the joint collaborative-text embedding (section 4.1.4)."""
        return self.item_enc(item_emb)

    def joint_text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """``q_i = f_T^enc(Q_i)``: the text-side code, used for items the CF model never saw."""
        return self.text_enc(text_emb)

    def losses(self, user: torch.Tensor, pos_item: torch.Tensor, neg_item: torch.Tensor,
               pos_text: torch.Tensor, neg_text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term of eq. 6 for a batch; ``"total"`` is the weighted sum that is trained.

        ``user`` [B, d] is the frozen SASRec vector after the history, ``pos_item`` /
        ``neg_item`` [B, d] the frozen SASRec embeddings of the next item and of a sampled
        negative, ``pos_text`` / ``neg_text`` [B, d_text] their text embeddings.
        """
        items, texts = torch.cat([pos_item, neg_item]), torch.cat([pos_text, neg_text])
        e, q = self.item_enc(items), self.text_enc(texts)
        items_hat, texts_hat = self.item_dec(e), self.text_dec(q)
        out = {"matching": matching_loss(e, q),
               "item_recon": F.mse_loss(items_hat, items),
               "text_recon": F.mse_loss(texts_hat, texts)}
        pos_hat, neg_hat = items_hat.chunk(2)
        pos_logit, neg_logit = (user * pos_hat).sum(-1), (user * neg_hat).sum(-1)
        out["rec"] = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                      + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))
        total = torch.zeros((), device=user.device)
        if self.use_matching:
            total = total + out["matching"]
        if self.use_recon:
            total = total + self.alpha * out["item_recon"] + self.beta * out["text_recon"]
        if self.use_rec:
            total = total + out["rec"]
        out["total"] = total
        return out

    def loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        """For :func:`recutils.training.fit`: ``batch = (user, pos_item, neg_item, pos_text, neg_text)``."""
        return self.losses(*batch)["total"]


# --- stage 2: prompts with soft tokens ------------------------------------------------------


@dataclass(frozen=True)
class SoftToken:
    """A place in a prompt that receives a projected vector instead of a word embedding.

    ``kind`` is ``"user"`` (the projected user vector) or ``"item"`` (the projected joint
    embedding of item id ``item``).
    """

    kind: str
    item: int = 0
    with_user: bool = False  # an item token that also adds the projected user vector


Segment = str | SoftToken


def _user_and_history(history: Sequence[str], candidates: Sequence[str],
                      history_ids: Sequence[int] | None, candidate_ids: Sequence[int] | None,
                      soft: bool) -> list[Segment]:
    """The opening both prompt formats share: the ids checked, the user soft token, the
    watched titles each followed by its item soft token (no soft tokens with ``soft=False``)."""
    if soft and (history_ids is None or candidate_ids is None):
        raise ValueError("soft tokens need the item ids of the history and the candidates")
    if soft and (len(history_ids) != len(history) or len(candidate_ids) != len(candidates)):
        raise ValueError("one item id per title is needed")
    seg: list[Segment] = [SoftToken("user"), " is a user representation. "] if soft else []
    seg.append("This user has watched ")
    for k, t in enumerate(history):
        seg.append(("" if k == 0 else ", ") + f'"{t}"')
        if soft:
            seg.append(SoftToken("item", int(history_ids[k])))
    return seg


def recommendation_prompt(history: Sequence[str], candidates: Sequence[str],
                          history_ids: Sequence[int] | None = None,
                          candidate_ids: Sequence[int] | None = None,
                          soft: bool = True) -> list[Segment]:
    """The paper's prompt (Fig. 3) as a list of text pieces and :class:`SoftToken` markers.

    With ``soft=False`` the markers are left out (the LLM-Only baseline reads the same words).
    The answer the LM should write after the prompt is ``'{title}"'`` (see :func:`answer`).
    """
    seg = _user_and_history(history, candidates, history_ids, candidate_ids, soft)
    seg.append(" in the previous. Recommend one next movie for this user to watch next from the "
               "following movie title set, ")
    for k, t in enumerate(candidates):
        seg.append(("" if k == 0 else ", ") + f'"{t}"')
        if soft:
            seg.append(SoftToken("item", int(candidate_ids[k])))
    seg.append('. The recommendation is "')
    return [s for s in seg if not (isinstance(s, str) and s == "")]


def short_title(title: str) -> str:
    """The title as the prompt shows it: readable, without trailing parentheses.

    ``"Shanghai Triad (Yao a yao yao dao waipo qiao)"`` -> ``"Shanghai Triad"``,
    ``"Usual Suspects, The"`` -> ``"The Usual Suspects"`` (fewer tokens per candidate).
    """
    t = title.strip()
    while True:
        s = re.sub(r"\s*\([^()]*\)$", "", t)
        if s == t or not s:
            break
        t = s
    return readable_title(t)


def wilson_interval(hits: Sequence[float] | np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a hit rate (stays inside [0, 1], sensible for few users)."""
    x = np.asarray(hits, dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    p = x.mean()
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def answer(title: str) -> str:
    """What the LM is trained to write after the prompt: the title and a closing quote."""
    return f'{title}"'


def cut_answer(text: str) -> str:
    """The generated title: text up to the closing quote (or the first line)."""
    return text.split('"')[0].split("\n")[0].strip()


def encode_segments(tokenizer, segments: Sequence[Segment]) -> tuple[list[int], list[tuple[int, SoftToken]]]:
    """Token ids of a prompt and the positions of its soft tokens.

    Each text piece is tokenised on its own (so a soft token never merges with a word);
    each :class:`SoftToken` takes one position holding the pad id as a placeholder.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids: list[int] = []
    slots: list[tuple[int, SoftToken]] = []
    for s in segments:
        if isinstance(s, SoftToken):
            slots.append((len(ids), s))
            ids.append(pad)
        else:
            ids.extend(tokenizer(s, add_special_tokens=False)["input_ids"])
    return ids, slots


def prompt_batch(tokenizer, prompts: Sequence[Sequence[Segment]], answers: Sequence[str] | None = None,
            eos: bool = True) -> dict:
    """Left-padded batch of prompts (+ answers): ``input_ids``, ``attention_mask``, ``labels``,
    and ``slots``, a list of (row, position, SoftToken) for every soft token.

    Labels are -100 everywhere except on the answer tokens (and the end-of-sequence token
    when ``eos``), so the loss covers only the answer (eq. 8).
    """
    rows = []
    for k, segs in enumerate(prompts):
        ids, slots = encode_segments(tokenizer, segs)
        labels = [IGNORE_INDEX] * len(ids)
        if answers is not None:
            a = tokenizer(answers[k], add_special_tokens=False)["input_ids"]
            if eos and tokenizer.eos_token_id is not None:
                a = a + [tokenizer.eos_token_id]
            ids, labels = ids + a, labels + a
        rows.append((ids, labels, slots))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = pad_rows([r[0] for r in rows], pad, side="left")
    labels = pad_rows([r[1] for r in rows], IGNORE_INDEX, side="left")
    mask = pad_rows([[1] * len(r[0]) for r in rows], 0, side="left")
    width = input_ids.shape[1]
    all_slots = [(r, width - len(ids) + p, s) for r, (ids, _, slots) in enumerate(rows)
                 for p, s in slots]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "slots": all_slots}


class SoftTokenProjector(nn.Module):
    """``F_U`` and ``F_I`` (eq. 7): 2-layer MLPs from the user / item vectors to the token width."""

    def __init__(self, user_dim: int, item_dim: int, token_dim: int, hidden: int | None = None,
                 ) -> None:
        super().__init__()
        hidden = hidden or token_dim
        self.user = mlp(user_dim, hidden, token_dim)
        self.item = mlp(item_dim, hidden, token_dim)


@dataclass(frozen=True)
class ALLMRecConfig:
    """Stage 2's hyper-parameters (eq. 7-8, prompt, decoding); the paper's values in comments."""

    proj_hidden: int | None = None  # projector hidden width; None: the LM's (paper: 4096 = OPT-6.7B)
    n_candidates: int = 20          # titles in the prompt: the target + 19 unseen (paper: 20)
    n_history: int = 5              # last history titles in the prompt (paper: 10)
    max_new_tokens: int = 12        # greedy decoding budget of an answer (paper's code: 32)
    batch_size: int = 4             # prompts per generation batch (paper: 4 per training step)
    loss: str = "answer"            # "answer": NLL of the answer tokens (eq. 8); "choice": softmax
                                    # over the candidates' index letters (choice format only)
    bf16: bool = False              # run the frozen LM under bf16 autocast (CPU AMX / CUDA)


class ALLMRec(nn.Module):
    """Stage 2: a frozen causal LM reading prompts with projected soft tokens.

    ``item_table`` [n_items + 1, item_dim] holds the (frozen) item vectors the soft tokens come
    from: the joint embeddings ``e_i`` for A-LLMRec, ``q_i`` for A-LLMRec (SBERT), the raw
    SASRec embeddings for the MLP-LLM baseline. Only :attr:`projector` is trainable.
    """

    def __init__(self, lm, tokenizer, item_table: torch.Tensor, user_dim: int,
                 config: ALLMRecConfig | None = None) -> None:
        super().__init__()
        self.config = config or ALLMRecConfig()
        proj_hidden = self.config.proj_hidden
        self.lm, self.tokenizer = lm, tokenizer
        for p in self.lm.parameters():
            p.requires_grad_(False)
        self.register_buffer("item_table", torch.as_tensor(item_table, dtype=torch.float32).clone())
        token_dim = lm.get_input_embeddings().embedding_dim
        self.projector = SoftTokenProjector(user_dim, self.item_table.shape[1], token_dim, proj_hidden)
        # start the soft tokens at the scale of the LM's own word embeddings
        scale = lm.get_input_embeddings().weight.detach().float().std().item()
        for head in (self.projector.user, self.projector.item):
            nn.init.normal_(head[-1].weight, 0.0, scale / head[-1].in_features ** 0.5)
            nn.init.zeros_(head[-1].bias)

    def set_item_table(self, item_table: torch.Tensor) -> None:
        """Swap the item vectors (e.g. ``e`` -> ``q`` for the SBERT variant); same width."""
        self.item_table = torch.as_tensor(item_table, dtype=torch.float32,
                                          device=self.item_table.device).clone()

    def inputs_embeds(self, batch: dict, user_vecs: torch.Tensor | None) -> torch.Tensor:
        """Word embeddings of ``batch["input_ids"]`` with every soft-token position overwritten."""
        emb = self.lm.get_input_embeddings()(batch["input_ids"])
        slots = batch.get("slots") or []
        if not slots:
            return emb
        rows = torch.tensor([r for r, _, _ in slots], device=emb.device)
        pos = torch.tensor([p for _, p, _ in slots], device=emb.device)
        is_user = torch.tensor([s.kind == "user" for _, _, s in slots], device=emb.device)
        items = torch.tensor([s.item for _, _, s in slots], device=emb.device)
        vec = self.projector.item(self.item_table[items])
        add_user = torch.tensor([s.with_user for _, _, s in slots], device=emb.device)
        if is_user.any() or add_user.any():
            if user_vecs is None:
                raise ValueError("the prompt has a user soft token but no user vectors were given")
            uvec = self.projector.user(user_vecs.float())[rows]
            vec = torch.where(is_user[:, None], uvec, vec + add_user[:, None] * uvec)
        emb = emb.clone()
        emb[rows, pos] = vec.to(emb.dtype)
        return emb

    def _autocast(self, device: torch.device):
        on = self.config.bf16 and device.type in ("cpu", "cuda")
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)

    def loss(self, batch: dict) -> torch.Tensor:
        """The training loss of ``batch`` (:func:`prompt_batch` + ``user_vecs``): the NLL of
        the answer tokens (eq. 8), or with ``config.loss == "choice"`` the cross-entropy of
        the target's index letter against the other candidates' letters (``target_index``)."""
        if self.config.loss == "choice":
            logits, full = self.choice_logits(batch, full=True)
            target = batch["target_index"]
            ids = torch.as_tensor(self.label_ids(), device=full.device)
            # which candidate (softmax over the letters) + that the answer is a letter at all
            return F.cross_entropy(logits, target) + F.cross_entropy(full, ids[target])
        emb = self.inputs_embeds(batch, batch.get("user_vecs"))
        with self._autocast(emb.device):
            logits = self.lm(inputs_embeds=emb, attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(),
                               ignore_index=IGNORE_INDEX)

    def choice_logits(self, batch: dict, full: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the ``n_candidates`` index letters at the last prompt position [B, n]
        and the greedy next token over the whole vocabulary [B] (the first generated token;
        with ``full=True`` the whole vocabulary's logits [B, V] instead).

        Prompts are left-padded (:func:`prompt_batch` without answers), so the last column
        is every row's last prompt token."""
        emb = self.inputs_embeds(batch, batch.get("user_vecs"))
        with self._autocast(emb.device):
            out = self.lm(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                          logits_to_keep=1)
        last = out.logits[:, -1].float()
        ids = torch.as_tensor(self.label_ids(), device=last.device)
        return last[:, ids], (last if full else last.argmax(-1))

    def label_ids(self) -> list[int]:
        """The token ids of the index letters (:func:`label_token_ids`), computed once."""
        if getattr(self, "_label_ids", None) is None:
            self._label_ids = label_token_ids(self.tokenizer, self.config.n_candidates)
        return self._label_ids

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int | None = None) -> list[str]:
        """Greedy continuation of each prompt (cut at the closing quote); at most
        ``max_new_tokens`` new tokens (default: the config's)."""
        max_new_tokens = max_new_tokens or self.config.max_new_tokens
        emb = self.inputs_embeds(batch, batch.get("user_vecs"))
        tok = self.tokenizer
        gen = self.lm.generate(inputs_embeds=emb, attention_mask=batch["attention_mask"],
                               max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        # with inputs_embeds only, generate returns just the new tokens
        return [cut_answer(t) for t in tok.batch_decode(gen, skip_special_tokens=True)]


# --- from an answer to a candidate ----------------------------------------------------------


def map_to_candidates(texts: Sequence[str], candidates: Sequence[Sequence[int]],
                      titles: Sequence[str], text_emb: np.ndarray | None = None,
                      item_emb: np.ndarray | None = None) -> tuple[list[int], list[bool]]:
    """The candidate each generated ``texts[u]`` names, and whether that was an exact match.

    Exact: the normalised title of a candidate equals the answer or appears inside it
    (the longest such title wins). Otherwise, with embeddings given, the candidate whose
    text embedding (``item_emb``, one row per item id) is most cosine-similar to the
    answer's (``text_emb[u]``); without them, no item (id 0).
    """
    out, exact = [], []
    for u, (text, cands) in enumerate(zip(texts, candidates)):
        got = f" {normalize_title(text)} "
        named = [(len(normalize_title(titles[c])), int(c)) for c in cands
                 if normalize_title(titles[c]) and f" {normalize_title(titles[c])} " in got]
        if named:
            out.append(max(named)[1])
            exact.append(True)
            continue
        exact.append(False)
        if text_emb is None or item_emb is None:
            out.append(0)
            continue
        others = np.setdiff1d(np.arange(1, len(item_emb)), np.asarray(cands))
        out.append(int(nearest_items(text_emb[u:u + 1], item_emb, k=1, exclude=[others])[0, 0]))
    return out, exact


# --- the choice format: candidates behind index letters ----------------------------------------


def choice_labels(n: int) -> list[str]:
    """The index letters of ``n`` candidates: ``A``, ``B``, ... (at most 26)."""
    if not 1 <= n <= 26:
        raise ValueError(f"the choice format labels 1 to 26 candidates, got {n}")
    return [chr(ord("A") + k) for k in range(n)]


def clip_title(title: str, max_words: int | None) -> str:
    """The first ``max_words`` words of a title (all of it with None): shorter prompts."""
    words = title.split()
    return title if max_words is None or len(words) <= max_words else " ".join(words[:max_words])


def choice_prompt(history: Sequence[str], candidates: Sequence[str],
                  history_ids: Sequence[int] | None = None,
                  candidate_ids: Sequence[int] | None = None, soft: bool = True,
                  user_at_end: bool = False, user_in_candidates: bool = False) -> list[Segment]:
    """The paper's prompt with every candidate behind an index letter, one per line.

    ``[U] is a user representation. This user has watched "h1"[I], ... in the previous.
    Recommend one next movie for this user to watch from the following candidates:
    A. c1[I] ... T. c20[I] Answer:`` and the LM answers with a letter (`` C``), so one
    forward pass scores every candidate (the logits of the 20 letters at the last position).
    ``user_at_end`` repeats the user soft token just before ``Answer:`` (the position
    whose logits choose), so the user vector is read where the choice is made;
    ``user_in_candidates`` adds the projected user vector to every candidate's item token
    (``F_I(e_i) + F_U(x_u)``), so the LM's own layers can compare user and item at one
    position instead of across the prompt.
    With ``soft=False`` no soft tokens (LLM-Only reads the same words).
    """
    seg = _user_and_history(history, candidates, history_ids, candidate_ids, soft)
    seg.append(" in the previous. Recommend one next movie for this user to watch from the "
               "following candidates:")
    for k, (lab, t) in enumerate(zip(choice_labels(len(candidates)), candidates)):
        if soft:  # the item's vector just before its letter: the letter's position reads it
            seg += ["\n", SoftToken("item", int(candidate_ids[k]), user_in_candidates),
                    f" {lab}. {t}"]
        else:
            seg.append(f"\n {lab}. {t}")
    if soft and user_at_end:
        seg += ["\nAnswer for this user", SoftToken("user"), ":"]
    else:
        seg.append("\nAnswer:")
    return seg


def label_token_ids(tokenizer, n: int) -> list[int]:
    """Token id of each index letter as the LM writes it after ``Answer:`` (`` A`` ...).

    Each must be a single token (true for the GPT-2-style BPEs of SmolLM2 and OPT).
    """
    out = []
    for lab in choice_labels(n):
        ids = tokenizer(f" {lab}", add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the index letter {lab!r} is {len(ids)} tokens for this tokenizer")
        out.append(ids[0])
    return out
