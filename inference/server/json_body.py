"""REST V2 requests without a Content-Type are JSON unless they use the binary tensor extension.

FastAPI (strict Content-Type checking, its default) hands kserve a body without a Content-Type as
bytes, and kserve reads bytes as the binary tensor extension, which it refuses without the
extension's ``inference-header-content-length`` header: a JSON request became a 400. Stock Open
Inference Protocol clients differ here; kserve's own InferenceRESTClient sends JSON with no
Content-Type at all. The extension's header is what marks binary data, so a POST that has neither
header is given ``application/json`` before FastAPI looks at it.
"""

from __future__ import annotations

_CONTENT_TYPE = b"content-type"
_BINARY_EXTENSION = b"inference-header-content-length"
_JSON = (_CONTENT_TYPE, b"application/json")


class JsonWithoutContentType:
    """ASGI middleware; ASGI header names are lower case, so a plain comparison finds them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = scope["headers"]
            if not any(name == _CONTENT_TYPE or name == _BINARY_EXTENSION for name, _ in headers):
                scope = {**scope, "headers": [*headers, _JSON]}
        await self.app(scope, receive, send)
