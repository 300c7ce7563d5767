"""Verification of draft tokens: which drafts are kept and which token follows them.

For a request with drafts ``x_1 .. x_k`` the model gives target distributions ``p_0 .. p_k`` at
its k + 1 rows (row i after the real tokens and ``x_1 .. x_i``; each row's logits processed with
the request's options, penalties and min_tokens counting the drafts before it).

    greedy rows:   accept x_{i+1} while it is the argmax of row i; the token after the accepted
                   prefix is that row's argmax (the same ids as decoding one token at a time)
    random rows:   accept x_{i+1} with probability p_i(x_{i+1}) (u ~ U(0, 1), u < p); at the
                   first rejection draw from p_i with x_{i+1}'s mass removed (renormalised); after
                   k acceptances draw the bonus token from p_k

This is speculative sampling (Leviathan et al. 2023; Chen et al. 2023) for a proposal that puts
all its mass on the draft token (n-gram / suffix drafts are deterministic): min(1, p/q) = p(x) and
the residual max(0, p - q) is p without x, so every emitted token is distributed as p. A request
with a seed draws its uniforms and its exponential-race noise from its own generator, a fixed
amount per step, so its output is reproducible run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kaon.sample import ops
from kaon.sample.metadata import SamplingMetadata
from kaon.sample.sampler import Sampler


@dataclass
class VerifyOutput:
    """Per request: emitted ids (accepted drafts, then one sampled token) and, when logprobs
    were asked for, [num_emitted, 1 + max_num_logprobs] ids and values and [num_emitted] ranks
    (rows as ``Sampler.gather_logprobs`` gives them)."""

    token_ids: list[list[int]]
    logprob_rows: list[tuple[list[list[int]], list[list[float]], list[int]]] | None = None


def verify_drafts(
    logits: torch.Tensor,
    metadata: SamplingMetadata,
    drafts: list[list[int]],
    generators: list[torch.Generator | None],
) -> VerifyOutput:
    """Accept or reject each request's drafts; see the module docstring.

    Args:
        logits: [num_rows, vocab] raw logits, 1 + len(drafts[r]) consecutive rows per request.
        metadata: one row per logits row (row i of a request counts its drafts before i).
        drafts: draft token ids per request.
        generators: per request, its seeded generator or None (the global one).
    """
    num_rows = [1 + len(draft) for draft in drafts]
    starts = [sum(num_rows[:r]) for r in range(len(drafts))]
    raw_logprobs = None
    if metadata.max_num_logprobs is not None:
        raw_logprobs = Sampler.process(logits, _plain(metadata)).log_softmax(dim=-1)
    processed = Sampler.process(logits, metadata)
    greedy, probs = Sampler.target_probs(processed, metadata)
    # draft_ids[row] = the draft token checked at that row; -1 on each request's last row.
    draft_ids = torch.tensor(
        [token for draft in drafts for token in [*draft, -1]], dtype=torch.int64
    ).to(logits.device)
    has_draft = draft_ids >= 0
    if probs is None:
        accept, candidate = draft_ids == greedy, greedy
    else:
        accept, candidate = _random_verify(
            probs, greedy, draft_ids, has_draft, num_rows, generators
        )
        is_greedy = (metadata.temperature < 1e-5).to(logits.device)
        accept = torch.where(is_greedy, draft_ids == greedy, accept)
        candidate = torch.where(is_greedy, greedy, candidate)
    accept_list, candidate_list = (accept & has_draft).tolist(), candidate.tolist()
    token_ids = []
    for draft, start in zip(drafts, starts, strict=True):
        num_accepted = 0
        while num_accepted < len(draft) and accept_list[start + num_accepted]:
            num_accepted += 1
        token_ids.append(draft[:num_accepted] + [candidate_list[start + num_accepted]])
    output = VerifyOutput(token_ids)
    if raw_logprobs is not None:
        output.logprob_rows = _logprob_rows(raw_logprobs, token_ids, starts, metadata)
    return output


def _random_verify(
    probs: torch.Tensor,
    greedy: torch.Tensor,
    draft_ids: torch.Tensor,
    has_draft: torch.Tensor,
    num_rows: list[int],
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acceptance per row (u < p(draft)) and the token drawn at each row from p with the draft's
    mass removed (the bonus distribution p itself on a request's last row)."""
    uniform = torch.empty(probs.shape[0], dtype=torch.float32, device=probs.device)
    noise = torch.empty_like(probs)
    if any(generator is None for generator in generators):
        uniform.uniform_()
        noise.exponential_()
    start = 0
    for count, generator in zip(num_rows, generators, strict=True):
        if generator is not None:  # a fixed amount of draws per step and request
            uniform[start : start + count].uniform_(generator=generator)
            noise[start : start + count].exponential_(generator=generator)
        start += count
    safe_ids = draft_ids.clamp(min=0).unsqueeze(1)
    draft_probs = probs.gather(1, safe_ids).squeeze(1)
    accept = has_draft & (uniform < draft_probs)
    residual = probs.scatter(1, safe_ids, torch.zeros_like(draft_probs).unsqueeze(1))
    residual = torch.where(has_draft.unsqueeze(1), residual, probs)
    candidate = ops.greedy_ids(residual.div(noise))  # exponential race: a draw from residual
    dead = residual.sum(dim=-1) <= 0
    return accept, torch.where(dead, greedy, candidate)


def _plain(metadata: SamplingMetadata) -> SamplingMetadata:
    """The same rows with no logits processing: logprobs are reported for the raw distribution."""
    return SamplingMetadata(
        all_greedy=True, all_random=False, temperature=metadata.temperature, top_k=None,
        top_p=None, min_p=None, generators={}, output_token_counts=None, prompt_token_mask=None,
        presence_penalties=None, frequency_penalties=None, repetition_penalties=None,
        logit_bias=None, min_tokens_masks=[], max_num_logprobs=None,
    )  # fmt: skip


def _logprob_rows(
    raw_logprobs: torch.Tensor,
    token_ids: list[list[int]],
    starts: list[int],
    metadata: SamplingMetadata,
) -> list[tuple[list[list[int]], list[list[float]], list[int]]]:
    rows = [start + i for tokens, start in zip(token_ids, starts, strict=True)
            for i in range(len(tokens))]  # fmt: skip
    chosen = torch.tensor([t for tokens in token_ids for t in tokens], dtype=torch.int64)
    gathered = Sampler.gather_logprobs(
        raw_logprobs[rows], chosen.to(raw_logprobs.device), metadata.max_num_logprobs or 0
    )
    assert gathered.logprob_token_ids is not None and gathered.logprobs is not None
    assert gathered.sampled_ranks is not None
    ids, values = gathered.logprob_token_ids.tolist(), gathered.logprobs.tolist()
    ranks = gathered.sampled_ranks.tolist()
    result, offset = [], 0
    for tokens in token_ids:
        end = offset + len(tokens)
        result.append((ids[offset:end], values[offset:end], ranks[offset:end]))
        offset = end
    return result
