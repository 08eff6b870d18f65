"""Decoding constrained to the catalogue: a prefix tree over each item's token path.

A generative recommender (GenRec's ID words, an LM that writes titles) is free to write
something that is no item, or an item the user has already seen. Restricting each decoding
step to the tokens that continue some allowed item's path removes both: every finished
sequence is an item, and excluded items (the user's history) cannot be completed.

>>> trie = TokenTrie({1: [5, 6, 0], 2: [5, 7, 0], 3: [8, 0]}, done_token=0)
>>> sorted(trie.allowed([]))
[5, 8]
>>> trie.allowed([5], exclude={1})     # item 1 excluded: only item 2 continues [5]
[7]
>>> trie.item([5, 7, 0, 9])            # the first complete path decides
2
>>> trie.allowed([5, 7, 0])            # finished: only the done token
[0]

Pass :meth:`TokenTrie.hf_prefix_fn` as ``prefix_allowed_tokens_fn`` to a Hugging Face
``generate`` call (greedy or beam search) to apply it there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import torch


class _Node:
    __slots__ = ("children", "items", "end")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.items: list[int] = []     # every item whose path runs through this node
        self.end: int | None = None    # the item whose path ends here


class TokenTrie:
    """Prefix tree of token paths, one per item (e.g. ``tokens(title) + [eos]``).

    ``allowed(prefix, exclude)`` gives the tokens that keep ``prefix`` on the way to an item
    not in ``exclude``; once a path is complete, or nothing can follow, it gives only
    ``done_token`` (padding / end of sequence, so a beam that has finished stays finished).
    Paths should end with a terminator token so no item's path is a prefix of another's;
    duplicate paths keep the first item.
    """

    def __init__(self, paths: Mapping[int, Sequence[int]], done_token: int) -> None:
        self.root = _Node()
        self.done_token = int(done_token)
        self.longest = 0
        for item, path in paths.items():
            if not len(path):
                raise ValueError(f"item {item} has an empty token path")
            node = self.root
            node.items.append(int(item))
            for t in path:
                node = node.children.setdefault(int(t), _Node())
                node.items.append(int(item))
            if node.end is None:
                node.end = int(item)
            self.longest = max(self.longest, len(path))

    def __len__(self) -> int:
        return len(self.root.items)

    def _walk(self, prefix: Sequence[int]) -> _Node | None:
        node = self.root
        for t in prefix:
            if node.end is not None:
                return None                  # a complete item: anything after is padding
            node = node.children.get(int(t))
            if node is None:
                return None
        return node

    def allowed(self, prefix: Sequence[int], exclude: Collection[int] = ()) -> list[int]:
        """The tokens that may follow ``prefix`` (``[done_token]`` when none may)."""
        node = self._walk(prefix)
        if node is None or node.end is not None:
            return [self.done_token]
        if exclude:
            out = [t for t, child in node.children.items()
                   if any(i not in exclude for i in child.items)]
        else:
            out = list(node.children)
        return out or [self.done_token]

    def item(self, tokens: Sequence[int]) -> int | None:
        """The item whose complete path starts ``tokens`` (None if no path is complete)."""
        node = self.root
        for t in tokens:
            node = node.children.get(int(t))
            if node is None:
                return None
            if node.end is not None:
                return node.end
        return None

    def hf_prefix_fn(self, prompt_length: int,
                     exclude: Sequence[Collection[int]] | None = None
                     ) -> Callable[[int, torch.Tensor], list[int]]:
        """A ``prefix_allowed_tokens_fn`` for ``transformers`` ``generate``.

        ``prompt_length`` tokens of each row are the prompt (1 for an encoder-decoder's
        decoder start token, the padded prompt width for a decoder-only LM); ``exclude[b]``
        holds the items row ``b`` of the batch may not produce (e.g. its history).
        """
        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            banned = exclude[batch_id] if exclude is not None else ()
            return self.allowed(ids[prompt_length:].tolist(), banned)
        return allowed
