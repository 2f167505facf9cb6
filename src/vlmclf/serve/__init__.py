"""An OpenAI-compatible chat server in front of any vlmclf model (`vlmclf serve`).

It lets the API path (``openai:<name> --base-url``) be exercised against a real model over real
HTTP, and lets one loaded model be shared by several evaluation processes. One request is one
image and one question. Concurrent requests are micro-batched into one batched ``generate``;
answers are greedy. It is built for local use and tests, with the limits a shared machine needs
(API key, timeouts, body and pixel caps); for production serving use vLLM or SGLang.
"""

from vlmclf.serve.protocol import RequestError, parse_chat_request
from vlmclf.serve.server import API_KEY_VARIABLE, ChatModelServer, ServeError, ServeLimits

__all__ = [
    "API_KEY_VARIABLE",
    "ChatModelServer",
    "RequestError",
    "ServeError",
    "ServeLimits",
    "parse_chat_request",
]
