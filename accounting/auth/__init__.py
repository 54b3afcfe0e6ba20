"""API keys and roles: who may call the API, and which team's data they see."""

from .models import ApiKey, Role
from .service import Principal, authenticate, create_key, list_keys, revoke

__all__ = ["ApiKey", "Principal", "Role", "authenticate", "create_key", "list_keys", "revoke"]
