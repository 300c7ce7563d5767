"""POST /v1/responses through the real openai client (``client.responses.create``): greedy text
equals the chat completion's for the same messages, streamed and not; event order, sequence
numbers, usage, incomplete responses and the fields that are refused."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.entrypoints.utils import MODEL_NAME

INSTRUCTIONS = "You are a helpful assistant. Answer briefly."
QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
MAX_TOKENS = 12

STREAM_ORDER = [
    "response.created", "response.in_progress", "response.output_item.added",
    "response.content_part.added",
]  # fmt: skip
STREAM_END = [
    "response.output_text.done", "response.content_part.done", "response.output_item.done",
]  # fmt: skip


@pytest.fixture(scope="module")
def chat_reference(client: openai.OpenAI):
    return client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )


def _expected_status(finish_reason: str) -> tuple[str, str]:
    if finish_reason == "length":
        return "incomplete", "response.incomplete"
    return "completed", "response.completed"


def test_response_equals_chat_completion(client: openai.OpenAI, chat_reference) -> None:
    response = client.responses.create(
        model=MODEL_NAME, instructions=INSTRUCTIONS, input=QUESTION,
        max_output_tokens=MAX_TOKENS, temperature=0, store=True,
    )  # fmt: skip
    expected = chat_reference.choices[0]
    assert response.output_text == expected.message.content
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL_NAME and response.instructions == INSTRUCTIONS
    status, _ = _expected_status(expected.finish_reason)
    assert response.status == status
    if status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.incomplete_details is None
    [item] = response.output
    assert (item.type, item.role, item.status) == ("message", "assistant", status)
    assert item.id.startswith("msg_")
    [part] = item.content
    assert (part.type, part.text, part.annotations) == ("output_text", response.output_text, [])
    usage = chat_reference.usage
    assert response.usage.input_tokens == usage.prompt_tokens
    assert response.usage.output_tokens == usage.completion_tokens
    assert response.usage.total_tokens == usage.total_tokens
    assert response.temperature == 0 and response.max_output_tokens == MAX_TOKENS
    assert response._request_id == "req_" + response.id.removeprefix("resp_")


def test_streamed_response_events(client: openai.OpenAI, chat_reference) -> None:
    events = list(client.responses.create(
        model=MODEL_NAME, instructions=INSTRUCTIONS, input=QUESTION,
        max_output_tokens=MAX_TOKENS, temperature=0, stream=True,
    ))  # fmt: skip
    types = [event.type for event in events]
    status, final_type = _expected_status(chat_reference.choices[0].finish_reason)
    assert types[:4] == STREAM_ORDER and types[-4:] == [*STREAM_END, final_type]
    deltas = types[4:-4]
    assert deltas and set(deltas) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events[4:-4])
    assert text == chat_reference.choices[0].message.content
    assert events[-4].text == text and events[-3].part.text == text
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert events[2].item.status == "in_progress" and events[2].item.content == []
    assert events[-2].item.status == status and events[-2].item.content[0].text == text
    assert final.id == created.id and final.status == status and final.output_text == text
    assert final.usage.input_tokens == chat_reference.usage.prompt_tokens
    assert final.usage.output_tokens == chat_reference.usage.completion_tokens
    item_ids = {event.item_id for event in events[3:-2]}
    assert item_ids == {events[2].item.id}


def test_message_list_input(client: openai.OpenAI) -> None:
    history = [
        {"role": "developer", "content": INSTRUCTIONS},
        {"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Blue.", "annotations": []}]},
        {"role": "user", "content": "Another one?"},
    ]  # fmt: skip
    messages = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    expected = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0
    )
    response = client.responses.create(
        model=MODEL_NAME, input=history, max_output_tokens=8, temperature=0
    )
    assert response.output_text == expected.choices[0].message.content
    assert response.usage.input_tokens == expected.usage.prompt_tokens


def test_cut_by_max_output_tokens(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_NAME, input="Write a long story about a dragon.", max_output_tokens=3,
        temperature=0,
    )  # fmt: skip
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3
    assert response.output[0].status == "incomplete"
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.create(model=MODEL_NAME, input="Hi", previous_response_id=response.id)
    assert error.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi", "previous_response_id": "resp_123"}, "previous_response_id"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "hi", "text": {"format": {"type": "json_object"}}}, "text.format.type"),
        ({"input": "hi", "reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].type"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": "hi", "temperature": -1}, "temperature"),
    ],
)
def test_refused_fields(http: httpx.Client, body: dict, param: str) -> None:
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert response.headers["x-request-id"].startswith("req_")


def test_accepted_and_ignored_fields(http: httpx.Client) -> None:
    base = {"input": QUESTION, "max_output_tokens": 4, "temperature": 0}
    expected = http.post("/v1/responses", json=base).json()
    extra = {"store": False, "metadata": {"k": "v"}, "tools": [], "tool_choice": "auto",
             "parallel_tool_calls": True, "text": {"format": {"type": "text"}},
             "truncation": "disabled", "background": False, "include": [], "user": "u",
             "previous_response_id": None, "top_p": None, "instructions": None}  # fmt: skip
    response = http.post("/v1/responses", json={**base, **extra})
    assert response.status_code == 200, response.text
    assert (
        response.json()["output"][0]["content"][0]["text"]
        == (expected["output"][0]["content"][0]["text"])
    )
