"""``kaon chat``: an interactive multi-turn chat in the terminal, streaming tokens as they come."""

from __future__ import annotations

import sys

from kaon.entrypoints.llm import LLM
from kaon.sampling_params import SamplingParams

HELP = "Type a message and press Enter. Commands: /reset (new conversation), /exit (or Ctrl-D)."


def stream_reply(llm: LLM, messages: list[dict], params: SamplingParams, out=sys.stdout) -> str:
    """Generate the assistant's next message, writing each text delta to ``out``; returns it."""
    engine = llm.engine
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    streaming = params.clone()
    streaming.output_kind_delta = True
    request_id = f"chat-{engine.num_steps}"
    engine.add_request(request_id, prompt, streaming)
    pieces = []
    try:
        while engine.has_unfinished_requests():
            for output in engine.step():
                delta = output.outputs[0].text if output.outputs else ""
                if delta:
                    pieces.append(delta)
                    out.write(delta)
                    out.flush()
    except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session
        engine.abort_request([request_id])
    out.write("\n")
    return "".join(pieces)


def run_chat(engine_options: dict, params: SamplingParams, system: str | None) -> int:
    """Read user turns from stdin until EOF or /exit; keep the whole conversation as context."""
    llm = LLM(**engine_options)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"kaon chat with {llm.engine.model_name}. {HELP}")
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            messages = messages[:1] if system else []
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = stream_reply(llm, messages, params)
        except ValueError as error:  # e.g. the conversation no longer fits max_model_len
            print(f"kaon: error: {error}. Use /reset to start over.", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})
