"""Command line: redraw RecFormer's [CLS] attention maps (Qu et al., Fig. 1) from a checkpoint.

Notebook 05 saves its behaviour-tuned model to ``build/05_recformer_<scale>.pt``
(:func:`recutils.models.recformer.save_checkpoint`)::

    python -m recutils.recformer_cli build/05_recformer_default.pt --user 7 --out maps.png

draws the vanilla backbone's maps beside the checkpoint's for one user's most recent items.
Either backbone works: a BERT-like encoder (MiniLM, the default scale) or Longformer
(``SCALE="paper"``; its banded maps are un-banded by
:func:`recutils.analysis.recformer_attention.cls_attention`).
"""

from __future__ import annotations

import argparse
import sys

from recutils.analysis.recformer_attention import instance_maps
from recutils.models.recformer import RecFormer, load_checkpoint, tokenize_items


def main(argv: list[str] | None = None) -> int:
    """Draw the maps of ``argv`` (see ``--help``); 0 on success, 2 for a missing or bad checkpoint."""
    ap = argparse.ArgumentParser(description="Draw [CLS] attention maps (vanilla backbone vs a "
                                             "checkpoint) for one user, as in Fig. 1 of Qu et al.")
    ap.add_argument("checkpoint", help="a file written by save_checkpoint (e.g. build/05_recformer_default.pt)")
    ap.add_argument("--user", default="7", help="raw user id of the dataset (default 7)")
    ap.add_argument("--items", type=int, default=3, help="most recent history items shown (default 3)")
    ap.add_argument("--out", default="maps.png", help="output image (default maps.png)")
    ap.add_argument("--no-vanilla", action="store_true", help="draw only the checkpoint's maps")
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    from recutils.data import item_attributes, load, prepare
    from recutils.lm import load_text_encoder
    from recutils.plots import attention_comparison

    try:
        model, tok, meta = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = prepare(load(meta.get("dataset", "ml-100k")), min_user=meta.get("min_user", 0),
                   min_item=meta.get("min_item", 0), max_len=meta.get("max_len"))
    users = {str(u): i for i, u in enumerate(data.user_ids)}
    if str(args.user) not in users:
        raise SystemExit(f"user {args.user!r} is not in {data.name} (raw ids such as {data.user_ids[0]!r})")
    history = data.inputs("test")[users[str(args.user)]]
    fields = tuple(meta.get("fields", model.config.fields))  # older checkpoints kept them in meta
    tokens = tokenize_items(tok, item_attributes(data.items, fields),
                            meta.get("item_tokens", model.config.item_tokens))
    maps = {}
    if not args.no_vanilla:
        backbone = load_text_encoder(meta.get("backbone", "all-MiniLM-L6-v2"), output_attentions=True)[0]
        vanilla = RecFormer(backbone, model.config)
        maps["vanilla backbone"], starts = instance_maps(vanilla, tokens, history, tok.cls_token_id,
                                                         tok.pad_token_id, args.items)
    maps[meta.get("label", "checkpoint")], starts = instance_maps(model, tokens, history, tok.cls_token_id,
                                                                  tok.pad_token_id, args.items)
    names = [data.titles([i])[0] for i in history[-args.items:][::-1]]
    fig = attention_comparison(maps, starts, item_names=names,
                               title=f"[CLS] attention, user {args.user} (most recent item first)")
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
