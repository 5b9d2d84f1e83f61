"""The OpenAI chat-completions wire format, both directions, shared by the `openai:`/`nim` backend and `serve`.

`sse` frames events; `fields` turns messages, tools, tool calls, usage, finish reasons, denoise drafts and model
entries into JSON and back; `request` writes a request body; `response` writes completions and chunks; `decoder`
reads them back into stream events.
"""
