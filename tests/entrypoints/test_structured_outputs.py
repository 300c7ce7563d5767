"""Structured outputs over real HTTP with the real openai client: JSON schemas, regex, choice,
``chat.completions.parse``, mixed constrained / unconstrained batches and bad constraints."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pydantic
import pytest

from kaon.benchmarks.structured_schemas import SCHEMAS
from tests.entrypoints.utils import API_KEY, MODEL_NAME, ServerProcess, offline_greedy

MAX_TOKENS = 120  # every test schema bounds its strings, so outputs end well before this


def _messages(name: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Reply with a JSON value for '{name}'."}]


def _response_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name]}}


async def _chat(client: openai.AsyncOpenAI, name: str, stream: bool, **params) -> list:
    """(text, finish_reason) of each choice of one chat request."""
    args = dict(model=MODEL_NAME, messages=_messages(name), max_tokens=MAX_TOKENS,
                response_format=_response_format(name), **params)  # fmt: skip
    if not stream:
        reply = await client.chat.completions.create(**args)
        return [(c.message.content, c.finish_reason) for c in reply.choices]
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    async for chunk in await client.chat.completions.create(stream=True, **args):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    return [(texts[i], reasons[i]) for i in sorted(texts)]


async def _all_schemas(server: ServerProcess) -> dict[str, list]:
    """Every schema greedy, every other schema also sampled (temperature 1, n = 3), all at once;
    streaming alternates between the schemas and between the two kinds of request."""
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    jobs, names = [], []
    for index, name in enumerate(SCHEMAS):
        jobs.append(_chat(client, name, index % 2 == 0, temperature=0))
        names.append(name)
        if index % 2 == 1:
            jobs.append(_chat(client, name, index % 4 == 1, temperature=1.0, n=3, seed=index))
            names.append(name)
    try:
        results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=600)
    finally:
        await client.close()
    outputs: dict[str, list] = {name: [] for name in SCHEMAS}
    for name, choices in zip(names, results, strict=True):
        outputs[name] += choices
    return outputs


def test_json_schemas_validate_greedy_sampled_streamed(server: ServerProcess) -> None:
    assert len(SCHEMAS) >= 20
    outputs = asyncio.run(_all_schemas(server))
    for name, choices in outputs.items():
        assert len(choices) == (4 if list(SCHEMAS).index(name) % 2 else 1), name
        for text, finish_reason in choices:
            assert finish_reason == "stop", (name, text)
            jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_regex_and_choice(client: openai.OpenAI) -> None:
    pattern = r"[A-Z][a-z]{2,8} [0-9]{2,3}"
    reply = client.completions.create(
        model=MODEL_NAME, prompt="A name and a number:", max_tokens=30, temperature=1.0, n=3,
        seed=7, extra_body={"structured_outputs": {"regex": pattern}},
    )  # fmt: skip
    for choice in reply.choices:
        assert re.fullmatch(pattern, choice.text), choice.text
        assert choice.finish_reason == "stop"
    choices = ["positive", "negative", "neutral"]
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "I love it! Sentiment?"}],
        max_tokens=10, temperature=1.0, n=3, seed=3,
        extra_body={"structured_outputs": {"choice": choices}},
    )  # fmt: skip
    for choice in reply.choices:
        assert choice.message.content in choices
        assert choice.finish_reason == "stop"


def test_json_object_and_grammar(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=200, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with {"ok": true} and nothing else.'}],
    )  # fmt: skip
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", text
    assert isinstance(json.loads(text), dict), text
    grammar = 'start: "The answer is " NUMBER "."\nNUMBER: /[0-9]{1,3}/\n'
    reply = client.completions.create(
        model=MODEL_NAME, prompt="2 + 2 =", max_tokens=20, temperature=0,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )  # fmt: skip
    assert re.fullmatch(r"The answer is [0-9]{1,3}\.", reply.choices[0].text)
    assert reply.choices[0].finish_reason == "stop"


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=120)


def test_chat_completions_parse_pydantic(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Describe a person."}],
        max_tokens=MAX_TOKENS, temperature=0, response_format=Person,
    )  # fmt: skip
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person)
    assert 0 <= person.age <= 120 and len(person.name) <= 12


async def _mixed(server: ServerProcess, prompts: list[str]) -> list[str]:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)

    async def one(index: int, prompt: str) -> str:
        extra = {}
        if index % 2 == 0:  # the constrained half samples at temperature 1 too
            name = list(SCHEMAS)[index % len(SCHEMAS)]
            extra = {"structured_outputs": {"json": SCHEMAS[name]}, "temperature": 1.0}
        reply = await client.completions.create(
            model=MODEL_NAME, prompt=prompt, max_tokens=16 if not extra else 60, seed=index,
            temperature=0, extra_body=extra,
        )  # fmt: skip
        return reply.choices[0].text

    try:
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    finally:
        await client.close()


def test_unconstrained_rows_unchanged_in_mixed_batch(server: ServerProcess, offline_llm) -> None:
    prompts = [f"Story {i}: once upon a time, a {['fox', 'king', 'ship', 'tree'][i % 4]}"
               for i in range(32)]  # fmt: skip
    texts = asyncio.run(_mixed(server, prompts))
    free = list(range(1, 32, 2))
    expected = offline_greedy(offline_llm, [prompts[i] for i in free], 16)
    for index, reference in zip(free, expected, strict=True):
        assert texts[index] == reference.text, index
    for index in range(0, 32, 2):
        name = list(SCHEMAS)[index % len(SCHEMAS)]
        jsonschema.validate(json.loads(texts[index]), SCHEMAS[name])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format.json_schema.schema"),
        ({"structured_outputs": {"json": {"type": "array", "minItems": 3, "maxItems": 1}}},
         "structured_outputs.json"),
        ({"structured_outputs": {"regex": "([a-z"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "start: missing_rule"}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": False}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema",
                              "json_schema": {"name": "x", "schema": "hi"}}},
         "response_format.json_schema.schema"),  # no pydantic type tag in the path
    ],
)  # fmt: skip
def test_bad_constraints_are_400_naming_the_field(http, body: dict, param: str) -> None:
    request = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 4, **body}  # fmt: skip
    response = http.post("/v1/chat/completions", json=request)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    # the server keeps serving
    ok = http.post("/v1/chat/completions", json={**request, **{k: None for k in body}})
    assert ok.status_code == 200, ok.text


def test_grammar_that_matches_nothing_fails_the_request_not_stop(http) -> None:
    """A regex with an empty language compiles, but no output can follow it: the request fails
    with a 500 naming the grammar (never ``finish_reason: "stop"`` with text that breaks the
    constraint), and the server keeps serving."""
    request = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 8, "structured_outputs": {"regex": "[^\\s\\S]"}}  # fmt: skip
    response = http.post("/v1/chat/completions", json=request)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert "could not follow its grammar" in error["message"], error
    assert "matches nothing" in error["message"], error
    digits = {**request, "structured_outputs": {"regex": "[0-9]{3}"}}
    ok = http.post("/v1/chat/completions", json=digits)
    assert ok.status_code == 200, ok.text
    choice = ok.json()["choices"][0]
    assert re.fullmatch("[0-9]{3}", choice["message"]["content"]), choice
    assert choice["finish_reason"] == "stop"
