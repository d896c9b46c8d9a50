"""Tokenization and padding-free, shared-prefix packing of preference pairs.

TRL's DPOTrainer runs every pair as two padded rows ``[prompt, chosen]`` and ``[prompt, rejected]``:
the prompt is computed twice and a third of the tokens are padding. Here a pair is ONE segment of a
packed row::

    row:       [ prompt (P) | chosen (C) | rejected (R) | prompt' | chosen' | rejected' | pad ... ]
    positions:   0 .. P-1     P .. P+C-1   P .. P+R-1      0 ..      ...       ...
    mask(i, j):  j <= i, same pair, and a rejected token never sees a chosen token

With these ``position_ids`` and the 4D additive mask each completion sees exactly the context it
has in its own sequence, so the logits equal the separate sequences' logits (checked in
``tests/training/test_training_batching.py``). Several pairs pack block-diagonally into a row;
rows are filled greedily up to ``max_tokens_per_row`` (length-grouped: long pairs first), so
padding is at most the tail of each row. SFT packs ``[prompt, chosen]`` segments the same way.

Log-probs are needed only at completion positions: ``src_index`` (M,) lists the flattened row
positions whose hidden state predicts ``targets`` (M,), and ``seq_id`` (M,) says which sequence
(``2*pair`` = chosen, ``2*pair + 1`` = rejected) a target belongs to. The first rejected token is
predicted from the LAST PROMPT position, which is shared with chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from onbrand.stats.text import common_prefix

IGNORE = -100


@dataclass
class TokenizedPair:
    """Token ids of one preference record (chosen/rejected may be empty lists for SFT)."""

    id: str
    prompt: list[int]
    chosen: list[int]
    rejected: list[int] = field(default_factory=list)
    ref_chosen: float | None = None  # cached reference log-probs (DPO), filled by ref_cache
    ref_rejected: float | None = None
    # Synthetic (machine-judged) pair and its loss weight (data.synthetic_weight; people's: 1.0).
    synthetic: bool = False
    weight: float = 1.0

    def __len__(self) -> int:
        return len(self.prompt) + len(self.chosen) + len(self.rejected)


def _ids(tok, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def with_system(system_prompt: str | None, prompt: list[dict]) -> list[dict]:
    """Prepend the brand card's system prompt (replacing a record's own system turn).

    Without a system turn SmolLM2's template inserts its generic default one; training under it
    would teach the model a different context than the one it is served with.
    """
    msgs = [dict(role=m["role"], content=m["content"]) for m in prompt]
    if system_prompt is None:
        return msgs
    msgs = [m for m in msgs if m["role"] != "system"]
    return [{"role": "system", "content": system_prompt}, *msgs]


def tokenize_pair(
    tok, record: dict[str, Any], system_prompt: str | None, max_length: int, where: str = ""
) -> TokenizedPair:
    """Tokenize like TRL 1.x's conversational DPO path (so losses match it token for token).

    prompt = template(prompt, add_generation_prompt); completion = template(prompt + answer) minus
    the common prefix (the completion keeps the template's end-of-turn tokens). Completions are
    cut so that ``prompt + max(chosen, rejected) <= max_length``; a prompt that alone leaves fewer
    than 8 completion tokens raises (never silently dropped).
    """
    prompt_msgs = with_system(system_prompt, record["prompt"])
    p = _ids(tok, prompt_msgs, add_generation_prompt=True)
    pc = _ids(tok, prompt_msgs + list(record["chosen"]))
    rejected = record.get("rejected")
    pr = _ids(tok, prompt_msgs + list(rejected)) if rejected else None
    n = common_prefix(p, pc) if pr is None else min(common_prefix(p, pc), common_prefix(p, pr))
    room = max_length - n
    if room < 8:
        raise ValueError(
            f"{where}record {record.get('id', '?')}: prompt is {n} tokens with the system prompt, leaving "
            f"{room} of max_length={max_length} for the completion; raise train.max_length"
        )
    return TokenizedPair(
        id=str(record.get("id", "")),
        prompt=p[:n],
        chosen=pc[n:][:room],
        rejected=(pr[n:][:room] if pr is not None else []),
    )


@dataclass
class PackedBatch:
    """Rows of packed pairs. Shapes: R rows, L tokens, M scored targets, S = 2 * pairs sequences."""

    input_ids: torch.Tensor  # (R, L) long
    position_ids: torch.Tensor  # (R, L) long
    attention_mask: torch.Tensor  # (R, 1, L, L) additive float: 0 = attend, finfo.min = blocked
    src_index: torch.Tensor  # (M,) long, flattened index r * L + t of the predicting position
    targets: torch.Tensor  # (M,) long, the token predicted there
    seq_id: torch.Tensor  # (M,) long in [0, S)
    last_index: torch.Tensor  # (S,) long, flattened index of each sequence's last token (rewards)
    num_pairs: int
    real_tokens: int  # non-pad tokens
    ids: list[str]

    def to(self, device) -> PackedBatch:
        for name in ("input_ids", "position_ids", "attention_mask", "src_index", "targets", "seq_id"):
            setattr(self, name, getattr(self, name).to(device))
        self.last_index = self.last_index.to(device)
        return self

    @property
    def num_sequences(self) -> int:
        return 2 * self.num_pairs

    def seq_lengths(self) -> torch.Tensor:
        """(S,) number of scored completion tokens of each sequence."""
        return torch.bincount(self.seq_id, minlength=self.num_sequences)


def _segments(pair: TokenizedPair, shared_prefix: bool) -> list[tuple[list[int], list[int], int]]:
    """Split a pair into (tokens, kinds, sequence slot) pieces; kinds: 0 prompt, 1 chosen, 2 rejected."""
    if shared_prefix or not pair.rejected:
        toks = pair.prompt + pair.chosen + pair.rejected
        kinds = [0] * len(pair.prompt) + [1] * len(pair.chosen) + [2] * len(pair.rejected)
        return [(toks, kinds, 0)]
    # Plain padding-free packing: two independent segments (prompt computed twice, like TRL).
    return [
        (pair.prompt + pair.chosen, [0] * len(pair.prompt) + [1] * len(pair.chosen), 0),
        (pair.prompt + pair.rejected, [0] * len(pair.prompt) + [2] * len(pair.rejected), 1),
    ]


def row_prefix_len(prompts: list[list[int]]) -> int:
    """Longest common prefix of several prompts (typically the brand system prompt), leaving at
    least one own prompt token per pair; 0 for a single prompt (nothing to share)."""
    if len(prompts) < 2:
        return 0
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = min(n, common_prefix(first[:n], p[:n]))
    return max(n, 0)


def pack_rows(
    pairs: list[TokenizedPair],
    max_tokens_per_row: int,
    shared_prefix: bool = True,
    share_row_prefix: bool = True,
) -> list[list[int]]:
    """Greedy first-fit-decreasing assignment of pair indices to rows (length grouping).

    With a row-shared prefix (the brand system prompt every pair starts with) a row holds the
    prefix once, so a pair costs only its own tokens.
    """
    s = row_prefix_len([p.prompt for p in pairs]) if (shared_prefix and share_row_prefix) else 0
    cost = [
        len(p) - s if shared_prefix or not p.rejected else len(p) + len(p.prompt) for p in pairs
    ]  # tokens a pair takes in a row
    order = sorted(range(len(pairs)), key=lambda i: -cost[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if cost[i] <= free:
                rows[r].append(i)
                room[r] -= cost[i]
                break
        else:
            rows.append([i])
            room.append(max(max_tokens_per_row - s, cost[i]) - cost[i])
    return [sorted(r) for r in rows]


@dataclass
class _Targets:
    """Scored completion tokens gathered while packing (row/offset pairs are flattened at the end)."""

    last: list  # per sequence: (row, offset) of its last token, 0 while it has none
    src: list[tuple[int, int]] = field(default_factory=list)  # (row, offset) of the predicting token
    tgt: list[int] = field(default_factory=list)  # the predicted token id
    sid: list[int] = field(default_factory=list)  # sequence id (2 * pair + 0 chosen / 1 rejected)

    def add(
        self, r: int, i: int, start: int, n_prompt: int, s: int, toks: list[int], kinds: list[int]
    ) -> None:
        """Record the chosen then rejected targets of pair ``i``'s segment placed at ``start`` of row ``r``."""
        for k in (1, 2):
            pos = [j for j, kk in enumerate(kinds) if kk == k]
            if not pos:
                continue
            # token at offset j is predicted by the previous token of the same sequence;
            # the first completion token by the last prompt token
            prev = [start + n_prompt - s - 1] + [start + j for j in pos[:-1]]
            self.src.extend((r, q) for q in prev)
            self.tgt.extend(toks[j] for j in pos)
            self.sid.extend([2 * i + (k - 1)] * len(pos))
            self.last[2 * i + (k - 1)] = (r, start + pos[-1])


def _segment_positions(kinds: list[int], n_prompt: int, s: int) -> list[int]:
    """Position ids of a segment: prompt s..P-1, chosen P..P+C-1, rejected restarts at P."""
    seg_pos, offsets = [], {0: s, 1: 0, 2: 0}
    for kk in kinds:
        base = 0 if kk == 0 else n_prompt
        seg_pos.append(base + offsets[kk])
        offsets[kk] += 1
    return seg_pos


def _pack_row(
    pairs: list[TokenizedPair], members: list[int], r: int, s: int, shared_prefix: bool, targets: _Targets
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Tokens, positions, pair ids (-2 = row prefix) and kinds of row ``r`` holding ``members``
    after a shared prefix of ``s`` tokens; records the row's targets in ``targets``."""
    first = pairs[members[0]].prompt
    t_row, p_row, pair_row, kind_row = list(first[:s]), list(range(s)), [-2] * s, [3] * s
    for i in members:
        pair = pairs[i]
        n_prompt = len(pair.prompt)
        for toks, kinds, _slot in _segments(pair, shared_prefix):
            toks, kinds = toks[s:], kinds[s:]  # the row prefix is already there
            targets.add(r, i, len(t_row), n_prompt, s, toks, kinds)
            t_row += toks
            p_row += _segment_positions(kinds, n_prompt, s)
            pair_row += [i] * len(toks)
            kind_row += kinds
    return t_row, p_row, pair_row, kind_row


def _pad_rows(rows: list[list[int]], length: int, fill: int) -> torch.Tensor:
    """(len(rows), length) long tensor of ``rows``, right-padded with ``fill``."""
    out = torch.full((len(rows), length), fill, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row)
    return out


def collate(
    pairs: list[TokenizedPair],
    max_tokens_per_row: int = 2048,
    shared_prefix: bool = True,
    pad_id: int = 0,
    share_row_prefix: bool = True,
) -> PackedBatch:
    """Pack ``pairs`` into a :class:`PackedBatch` (see the module docstring for the layout).

    ``share_row_prefix`` (with ``shared_prefix``): the prompts' common prefix (the system prompt)
    is put once at the start of a row, every pair of the row attends to it, and each pair's own
    tokens continue at its position (kind 3 in the mask).
    """
    rows = pack_rows(pairs, max_tokens_per_row, shared_prefix, share_row_prefix)
    targets = _Targets(last=[0] * (2 * len(pairs)))
    built = []  # per row: tokens, positions, pair index per token (-2 = row prefix), kinds
    for r, members in enumerate(rows):
        s = row_prefix_len([pairs[i].prompt for i in members]) if (shared_prefix and share_row_prefix) else 0
        built.append(_pack_row(pairs, members, r, s, shared_prefix, targets))
    tokens, positions, pair_of, kind_of = (list(col) for col in zip(*built)) if built else ([], [], [], [])
    length = max((len(t) for t in tokens), default=0)
    pair_t = _pad_rows(pair_of, length, -1)  # -1 = padding
    kind_t = _pad_rows(kind_of, length, 0)
    mask = block_mask(pair_t, kind_t, shared_prefix)
    flat = lambda rq: rq[0] * length + rq[1]  # noqa: E731
    return PackedBatch(
        input_ids=_pad_rows(tokens, length, pad_id),
        position_ids=_pad_rows(positions, length, 0),
        attention_mask=mask,
        src_index=torch.tensor([flat(x) for x in targets.src], dtype=torch.long),
        targets=torch.tensor(targets.tgt, dtype=torch.long),
        seq_id=torch.tensor(targets.sid, dtype=torch.long),
        last_index=torch.tensor(
            [flat(x) if isinstance(x, tuple) else 0 for x in targets.last], dtype=torch.long
        ),
        num_pairs=len(pairs),
        real_tokens=sum(len(t) for t in tokens),
        ids=[p.id for p in pairs],
    )


def block_mask(pair_t: torch.Tensor, kind_t: torch.Tensor, shared_prefix: bool = True) -> torch.Tensor:
    """(R, L) pair ids (-1 pad) and kinds -> (R, 1, L, L) additive mask.

    allowed(i, j) = j <= i & (j in the row prefix, or: same pair & same segment & not (i rejected
    and j chosen)). Without a
    shared prefix a pair has two segments; tokens then only see their own segment, which the kind
    rule already guarantees except for the second prompt copy, told apart by a segment counter.
    Padding rows attend to themselves so softmax never sees an all-blocked row (NaN).
    """
    n = pair_t.shape[1]
    seg = pair_t.clone()
    if not shared_prefix:
        # a new segment starts where a prompt token follows a completion token
        starts = (kind_t[:, 1:] == 0) & (kind_t[:, :-1] != 0)
        seg = seg * 2 + torch.cat([torch.zeros_like(starts[:, :1]), starts], dim=1).long().cumsum(1) % 2
        seg = torch.where(pair_t < 0, -1, seg)
    same = (seg[:, :, None] == seg[:, None, :]) & (pair_t[:, :, None] >= 0)
    # the row prefix (kind 3) is seen by every non-pad token of its row
    prefix = (kind_t[:, None, :] == 3) & (pair_t[:, :, None] != -1)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    no_peek = ~((kind_t[:, :, None] == 2) & (kind_t[:, None, :] == 1))
    allowed = ((same & no_peek) | prefix) & causal
    allowed |= torch.eye(n, dtype=torch.bool)
    out = torch.zeros(allowed.shape, dtype=torch.float32)
    out.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return out[:, None]
