"""Face-selection policies: which detected face a single-face operation uses (see
`detect.select_face`). Kept apart so the CLI can offer them without importing the detector."""

POLICIES = ("single", "largest", "central")
