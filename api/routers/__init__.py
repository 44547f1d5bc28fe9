"""One router per resource: faces compared or embedded, identifications, people, the service."""
