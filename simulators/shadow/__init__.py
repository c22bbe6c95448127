"""The AWS IoT Device Shadow service stand-in: document logic (document.py), the MQTT service and its
requesting side (service.py), and the command line (``python -m simulators.shadow``, __main__.py)."""

from simulators.shadow.document import DEFAULT_MAX_DOCUMENT_BYTES, ShadowKey, ShadowRequestError, ShadowStore
from simulators.shadow.service import Document, ShadowCaller, ShadowService

__all__ = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "Document",
    "ShadowCaller",
    "ShadowKey",
    "ShadowRequestError",
    "ShadowService",
    "ShadowStore",
]
