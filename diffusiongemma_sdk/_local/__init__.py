"""Pieces the local engines share (`torch:` and `gguf:`), whatever runs the network: the chat template and the
forced tool call (`chat`), the sampler's settings and a request's token budget (`settings`), a request made ready for
an engine and the capabilities every local engine declares (`request`), a request's progress from committed canvases
to stream events (`progress`), and the backend methods they implement alike (`backend`).

`chat` needs jinja2, which the engine distributions declare; the core's own install never imports this package.
"""
