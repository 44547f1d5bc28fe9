"""Who may use a gallery over the network: API keys with scopes (kept in the gallery, hashed), the
web UI's users (an auth file, hashed), and the rule that nothing listens beyond this machine
without a login."""
from .exposure import check_exposure, is_loopback
from .hashing import check_secret, hash_secret
from .keys import SCOPES, ApiKey, KeyRing
from .users import UserFile

__all__ = ["SCOPES", "ApiKey", "KeyRing", "UserFile", "check_exposure", "is_loopback", "hash_secret",
           "check_secret"]
