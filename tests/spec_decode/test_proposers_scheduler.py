"""Speculative decoding without the model: config validation, the n-gram and suffix proposers,
the drafter's caps and back-off, the scheduler's draft scheduling and KV rollback, and the
rejection sampler's output distribution (chi-square against the exact target)."""

import math

import pytest
import torch

from kaon.config import EngineConfig
from kaon.core.kv_cache_manager import KVCacheManager
from kaon.core.scheduler import Scheduler
from kaon.outputs import ModelRunnerOutput
from kaon.request import Request
from kaon.sample.metadata import SamplingMetadata
from kaon.sampling_params import SamplingParams
from kaon.spec_decode.config import SpeculativeConfig
from kaon.spec_decode.drafter import Drafter, draft_length
from kaon.spec_decode.ngram_proposer import NgramProposer
from kaon.spec_decode.rejection_sampler import verify_drafts
from kaon.spec_decode.suffix_proposer import SuffixProposer

# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"method": "eagle"}, "speculative_config.method"),
        ({"method": "ngram", "num_speculative_tokens": 0}, "speculative_config.num_speculative"),
        ({"prompt_lookup_min": 5, "prompt_lookup_max": 3}, "speculative_config.prompt_lookup_min"),
        ({"prompt_lookup_min": 0}, "speculative_config.prompt_lookup_min"),
        ({"num_speculative_tokens": "4"}, "speculative_config.num_speculative_tokens"),
        ({"draft_acceptance_threshold": 1.0}, "speculative_config.draft_acceptance_threshold"),
        ({"draft_acceptance_threshold": "0.3"}, "speculative_config.draft_acceptance_threshold"),
        ({"draft_model": "x"}, "speculative_config.draft_model"),
        ("not json", "speculative_config must be a JSON object"),
    ],
)
def test_bad_speculative_config_names_the_field(value, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        EngineConfig.from_options(speculative_config=value)


def test_speculative_config_from_dict_json_and_cli():
    from kaon.cli import build_parser

    config = EngineConfig.from_options(
        speculative_config='{"method": "suffix", "num_speculative_tokens": 3}'
    ).speculative_config
    assert (config.method, config.num_speculative_tokens) == ("suffix", 3)
    assert EngineConfig.from_options().speculative_config is None
    args = build_parser().parse_args(
        ["serve", "--speculative-config", '{"method": "ngram", "prompt_lookup_max": 5}']
    )
    assert (
        args.speculative_config == SpeculativeConfig(method="ngram", prompt_lookup_max=5).to_dict()
    )
    assert EngineConfig.from_options(speculative_config=args.speculative_config).speculative_config


def test_cli_rejects_bad_speculative_config(capsys):
    from kaon.cli import build_parser

    with pytest.raises(SystemExit) as error:
        build_parser().parse_args(["serve", "--speculative-config", '{"method": "medusa"}'])
    assert error.value.code == 2
    assert "speculative_config.method" in capsys.readouterr().err


# ---------------------------------------------------------------- proposers


def test_ngram_takes_the_latest_longest_match():
    proposer = NgramProposer(prompt_lookup_min=1, prompt_lookup_max=3)
    #         0  1  2  3  4  5  6  7  8  9 10
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    # "1 2 3" last occurred at 5..7 (before the end), followed by 7 8 1 2
    assert proposer.propose(tokens, 4) == [7, 8, 1, 2]
    assert proposer.propose(tokens, 2) == [7, 8]
    # No 3-gram or 2-gram match: falls back to the 1-gram "5" -> nothing after it but 6
    assert proposer.propose([5, 6, 4, 4, 2, 5], 3) == [6, 4, 4]
    assert NgramProposer(2, 3).propose([5, 6, 4, 4, 2, 5], 3) == []  # min 2: no match
    assert proposer.propose([1], 3) == []


def test_suffix_proposer_walks_the_most_frequent_continuation():
    proposer = SuffixProposer(min_depth=1, max_depth=4, max_requests=2)
    tokens = [1, 2, 3, 4, 1, 2, 3, 5, 1, 2, 3, 5, 1, 2]
    # After "1 2" comes 3; after "1 2 3", 5 twice and 4 once -> 5; then "3 5" -> 1 ...
    assert proposer.propose("a", tokens, 5) == [3, 5, 1, 2, 3]
    proposer.finish("a", [7, 8, 9, 7, 8])
    # Another request: its own tokens have no match, the shared index of responses has "7 8".
    assert proposer.propose("b", [6, 7, 8], 2) == [9, 7]
    proposer.finish("b", [1])
    proposer.finish("c", [2])  # "a"'s response leaves the shared index (max_requests 2)
    assert proposer.propose("d", [6, 7, 8], 2) == []


def test_draft_length_follows_the_acceptance_rate():
    # the longest L with alpha ** L >= threshold, within 1 .. k
    assert draft_length(0.9, 0.3, 8) == 8  # 0.9 ** 8 = 0.43
    assert draft_length(0.9, 0.3, 20) == 11  # 0.9 ** 11 = 0.31, 0.9 ** 12 = 0.28
    assert draft_length(0.7, 0.3, 8) == 3  # 0.343 / 0.240
    assert draft_length(0.2, 0.3, 8) == 1  # never below one token (back-off turns it off)
    assert draft_length(1.0, 0.3, 5) == 5 and draft_length(0.0, 0.3, 5) == 1
    assert draft_length(0.5, 0.0, 6) == 6


def test_drafter_caps_by_max_tokens_and_backs_off():
    config = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, max_backoff_steps=3)
    drafter = Drafter(config, max_model_len=100)
    request = Request("r", [1, 2, 3, 4, 1, 2, 3], SamplingParams(max_tokens=3))
    assert drafter.propose(request, 8) == [4, 1]  # 3 tokens left: 2 drafts + the bonus token
    request.append_output_token_ids([4, 1])
    assert drafter.propose(request, 8) == []  # one token left: no draft
    request = Request("s", [1, 2, 3, 4, 1, 2, 3], SamplingParams(max_tokens=50))
    assert drafter.propose(request, 2) == [4, 1]  # the step's row budget
    drafter.record("s", 2, 0)  # a miss: skip 1 step, then drafts of 1
    assert drafter.propose(request, 8) == []
    assert drafter.propose(request, 8) == [4]
    drafter.record("s", 1, 0)  # second miss in a row: skip 3 steps
    assert [drafter.propose(request, 8) for _ in range(4)] == [[], [], [], [4]]
    drafter.record("s", 1, 1)  # accepted: alpha = 1.82 / 3.46 = 0.53, 0.53 ** 2 < 0.3
    assert drafter.propose(request, 8) == [4]
    stats = drafter.stats
    assert (stats.num_drafts, stats.num_draft_tokens, stats.num_accepted_tokens) == (3, 4, 1)
    assert stats.num_accepted_tokens_per_pos == [1, 0, 0, 0]
    assert stats.mean_acceptance_length == pytest.approx(1 + 1 / 3)
    # Fully accepted drafts: the draft grows to k (alpha 0.65 -> 2 tokens, 0.79 -> 4) ...
    drafter.record("s", 1, 1)
    assert drafter.propose(request, 8) == [4, 1]
    drafter.record("s", 2, 2)
    assert drafter.propose(request, 8) == [4, 1, 2, 3]
    drafter.record("s", 4, 4)
    # ... and one early rejection among many acceptances keeps it long (alpha 0.79).
    drafter.record("s", 4, 1)
    assert drafter.propose(request, 8) == [4, 1, 2, 3]
    assert drafter.row_budget(3) == 5 and drafter.row_budget(9) == 0


# ---------------------------------------------------------------- scheduler


def _scheduler(num_blocks=8, block_size=4, max_num_verify_rows=8):
    config = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1,
                               max_num_verify_rows=max_num_verify_rows)  # fmt: skip
    manager = KVCacheManager(num_blocks, block_size)
    drafter = Drafter(config, max_model_len=64)
    return Scheduler(manager, 8, 64, 64, drafter=drafter), manager


def test_scheduler_verifies_drafts_and_rolls_back_rejected_ones():
    scheduler, manager = _scheduler()
    request = Request("r", [1, 2, 3, 4, 1, 2, 3], SamplingParams(max_tokens=20))
    scheduler.add_request(request)
    output = scheduler.schedule()  # prefill of 7 tokens: 2 blocks
    scheduler.update_from_output(output, ModelRunnerOutput(["r"], [4]))
    # Tokens 1 2 3 4 1 2 3 4: the last "4" follows "3" earlier -> drafts 1 2 3 4
    output = scheduler.schedule()
    (scheduled,) = output.scheduled_requests
    assert scheduled.token_ids == [4, 1, 2, 3, 4] and scheduled.spec_token_ids == [1, 2, 3, 4]
    assert scheduled.num_computed_tokens == 7 and output.num_scheduled_tokens == 5
    assert len(scheduled.block_ids) == 3  # 12 slots for 12 tokens
    assert request.num_computed_tokens == 12
    # Two drafts accepted, then the model says 9 instead of 3: 3 tokens appended.
    outputs = scheduler.update_from_output(
        output, ModelRunnerOutput(["r"], [9], accepted_draft_token_ids={"r": [1, 2]})
    )
    assert outputs[0].new_token_ids == [1, 2, 9]
    assert request.all_token_ids == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 9]
    assert request.num_computed_tokens == 10  # 7 + the decode token + 2 accepted drafts
    assert len(manager.get_block_ids("r")) == 3 and request.spec_token_ids == []
    # Blocks that only held rejected drafts go back to the pool.
    output = scheduler.schedule()  # "9" is new: no match, plain decode
    assert output.scheduled_requests[0].spec_token_ids == []
    request.num_computed_tokens = 10  # pretend the step did not run; verify the rollback helper
    request.spec_token_ids = [5, 5, 5, 5, 5, 5]
    request.num_computed_tokens = 17
    manager.allocate_slots(request, 0)
    scheduler._finish_drafts(request, 0)
    assert request.num_computed_tokens == 11 and len(manager.get_block_ids("r")) == 3
    scheduler.finish_requests(["r"], request.status.FINISHED_ABORTED)
    assert manager.num_free_blocks == 8


def test_drafts_stop_at_eos_and_row_budget_turns_drafting_off():
    scheduler, manager = _scheduler(num_blocks=32, max_num_verify_rows=3)
    for name in "abc":
        scheduler.add_request(Request(name, [1, 2, 1, 2, 1], SamplingParams(max_tokens=9),
                                      eos_token_ids={2}))  # fmt: skip
    output = scheduler.schedule()
    scheduler.update_from_output(output, ModelRunnerOutput(list("abc"), [2, 2, 2]))
    # eos right away ends them all (min_tokens 0)
    assert not scheduler.has_unfinished_requests() and manager.num_free_blocks == 32
    for name in "abc":
        scheduler.add_request(Request(name, [1, 2, 1, 2, 1], SamplingParams(max_tokens=9)))
    output = scheduler.schedule()
    scheduler.update_from_output(output, ModelRunnerOutput(list("abc"), [2, 2, 2]))
    output = scheduler.schedule()  # 3 decode rows: 3 - 3 = no room for drafts
    assert all(not r.spec_token_ids for r in output.scheduled_requests)


# ---------------------------------------------------------------- rejection sampler


def _metadata(num_rows: int, temperature: float) -> SamplingMetadata:
    return SamplingMetadata(
        all_greedy=temperature == 0, all_random=temperature > 0,
        temperature=torch.full((num_rows,), temperature), top_k=None, top_p=None, min_p=None,
        generators={}, output_token_counts=None, prompt_token_mask=None, presence_penalties=None,
        frequency_penalties=None, repetition_penalties=None, logit_bias=None, min_tokens_masks=[],
        max_num_logprobs=None,
    )  # fmt: skip


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper quantile of chi-square(df) by Wilson and Hilferty (1931); z = 3.09 -> p = 0.001."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_rejection_sampling_keeps_the_target_distribution():
    """20,000 verifications of the draft [2, 0] against fixed target rows: the first emitted
    token is distributed as p0, and after an accepted 2 the second as p1 (chi-square, p=0.001)."""
    torch.manual_seed(0)
    p0 = torch.tensor([0.1, 0.2, 0.4, 0.05, 0.25])
    p1 = torch.tensor([0.3, 0.3, 0.1, 0.2, 0.1])
    p2 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    num = 20_000
    logits = torch.stack([p0.log(), p1.log(), p2.log()]).repeat(num, 1)
    result = verify_drafts(logits, _metadata(3 * num, 1.0), [[2, 0]] * num, [None] * num)
    first = torch.tensor([tokens[0] for tokens in result.token_ids])
    second = torch.tensor([tokens[1] for tokens in result.token_ids if tokens[0] == 2])
    for sample, p in ((first, p0), (second, p1)):
        counts = torch.bincount(sample, minlength=5).double()
        expected = p.double() * len(sample)
        statistic = float(((counts - expected) ** 2 / expected).sum())
        assert statistic < chi_square_critical(4), (counts, expected)
    assert {len(tokens) for tokens in result.token_ids} == {1, 2, 3}


def test_rejection_sampling_greedy_and_seeded():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    greedy = verify_drafts(logits, _metadata(3, 0.0), [[1, 2]], [None])
    assert greedy.token_ids == [[1, 0]]  # 1 accepted, 2 rejected for the argmax 0

    def seeded():
        generator = torch.Generator().manual_seed(7)
        return [verify_drafts(logits, _metadata(3, 1.0), [[1, 2]], [generator]).token_ids
                for _ in range(20)]  # fmt: skip

    assert seeded() == seeded()


def test_prometheus_spec_decode_counters():
    from kaon.core.scheduler import SchedulerStats
    from kaon.metrics import PrometheusStatLogger
    from kaon.spec_decode.drafter import SpecDecodeStats

    logger = PrometheusStatLogger("m")
    spec = SpecDecodeStats(2, 8, 5, [2, 2, 1, 0])
    logger.record_stats(SchedulerStats(1, 0, 0.5, 0.0, 0, spec_decode=spec))
    spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens = 3, 12, 6
    spec.num_accepted_tokens_per_pos[3] = 1
    logger.record_stats(SchedulerStats(1, 0, 0.5, 0.0, 0, spec_decode=spec))
    text = logger.render().decode()
    assert 'kaon:spec_decode_num_drafts_total{model_name="m"} 3.0' in text
    assert 'kaon:spec_decode_num_draft_tokens_total{model_name="m"} 12.0' in text
    assert 'kaon:spec_decode_num_accepted_tokens_total{model_name="m"} 6.0' in text
    assert (
        'kaon:spec_decode_num_accepted_tokens_per_pos_total{model_name="m",position="3"} 1.0'
        in text
    )
