"""Serving one Session: KServe v2 protocol codecs, the dynamic batcher, the HTTP server and its
workers, metrics, and the Triton model repository for scaling out.

The HTTP modules need the ``serve`` extra (starlette, uvicorn, prometheus-client) and are
imported where used; this package's face is the part that needs only numpy.
"""

from stn_deploy.runtime.serving.batcher import DynamicBatcher
from stn_deploy.runtime.serving.batcher_config import BatcherConfig

__all__ = ["BatcherConfig", "DynamicBatcher"]
