"""Speculative decoding without a draft model: n-gram prompt lookup and suffix decoding.

    scheduler (kaon/core) --asks--> Drafter (drafter.py: per-request proposers + back-off)
        -> ScheduledRequest.spec_token_ids (k drafts after the last real token)
    model runner: the request's 1 + k tokens run as 1 + k decode rows of the same forward
        -> rejection_sampler.py: accepted drafts + one bonus/corrected token
    scheduler.update_from_output: rolls num_computed_tokens back over rejected drafts and frees
        blocks that only held them.

The proposers and the drafter are plain Python (no torch) so the scheduler can use them;
``rejection_sampler`` is the torch part, used by the worker only.
"""
