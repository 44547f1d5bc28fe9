"""faceverify's REST API (FastAPI + uvicorn): verify, embed, identify and manage people over HTTP,
behind API keys with scopes, rate limits and an audit trail. Installed as `faceverify_api`; a thin
layer over the library, which never imports it."""
