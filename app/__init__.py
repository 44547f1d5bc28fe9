"""faceverify web UI (Gradio): verify, identify, enroll, about."""
