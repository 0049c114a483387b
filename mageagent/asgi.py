from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mageagent.settings")
django.setup(set_prefix=False)  # what get_asgi_application() does, before consumers import models

from . import bodylimit, tracing  # noqa: E402
from .handlers import MageAgentASGIHandler  # noqa: E402

bodylimit.install()  # daphne imports this module before it listens: its requests are capped
# Before the handler loads its middleware: the request span's middleware goes first.
tracing.configure(service="mageagent-web", web=True)

django_asgi_app = MageAgentASGIHandler()

import litellm  # noqa: E402, F401  (a 3 s import: pay it at start, not in the first request)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402
from django.conf import settings  # noqa: E402

from tasks.socketio_app import socketio_app  # noqa: E402
from tasks.ws_urls import websocket_urlpatterns  # noqa: E402

from .logging import redact_daphne_access_log  # noqa: E402
from .protocol import keep_bodies_raw  # noqa: E402
from .redis_check import warn_if_redis_evicts  # noqa: E402

redact_daphne_access_log(as_records=settings.LOG_FORMAT == "json")
keep_bodies_raw()
warn_if_redis_evicts()

channels_app = ProtocolTypeRouter({
    "http": django_asgi_app,
    # Sessions only: a staff session's user is looked up by the consumer, and only when no
    # API key was given (channels' AuthMiddleware would do it in the pool for every socket,
    # before the handshake completes).
    "websocket": SessionMiddlewareStack(URLRouter(websocket_urlpatterns)),
})

# Socket.IO (the seed's client) at /socket.io/, beside Channels: everything else goes through.
application = socketio_app(channels_app)
