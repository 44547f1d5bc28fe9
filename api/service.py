"""What every request shares: the verifier, the gallery's location, the keys already checked, the
limits and the pool. Galleries are opened per request (a connection each: thread-safe on both
stores) and credited to the caller's key in the audit trail."""
from __future__ import annotations

from faceverify import Verifier, __version__
from faceverify.access.keys import ApiKey, CheckedTokens, KeyRing
from faceverify.gallery import Gallery, open_store

from .limits import InferencePool, RateLimiter
from .settings import ApiSettings


class Service:
    def __init__(self, verifier: Verifier, settings: ApiSettings):
        self.verifier, self.settings, self.version = verifier, settings, __version__
        self.limiter = RateLimiter(settings.rate, settings.burst)
        self.pool = InferencePool(settings.workers, settings.queue, settings.request_timeout_s)
        self.checked = CheckedTokens()
        with self.gallery("api") as gallery:  # created for this model if new; refused if another's
            gallery.kept.prune(gallery.store.sources())

    def gallery(self, actor: str) -> Gallery:
        return Gallery(self.settings.gallery, self.verifier, busy_timeout_s=self.settings.busy_timeout_s,
                       actor=actor, photos=self.settings.photos)

    def authenticate(self, token: str | None) -> ApiKey:
        """The caller's key (the gallery says whether it is in force, on every request)."""
        store = open_store(self.settings.gallery, None, busy_timeout_s=self.settings.busy_timeout_s)
        try:
            return KeyRing(store, self.checked).authenticate(token)
        finally:
            store.close()

    def close(self) -> None:
        self.pool.shutdown()
