"""Detector choices kept apart so the CLI can offer them without importing the detector:
the detector names (`detect.registry`), face-selection policies (which detected face a
single-face operation uses, see `detect.select_face`) and the default size photos are detected at."""

POLICIES = ("single", "largest", "central")

#: Images are detected at most this many pixels on their long side (landmarks are scaled back and
#: alignment uses the full-resolution image), which bounds detection time on huge photos; a
#: detector's `max_side` lowers it (a speed knob: faces must stay ≥ 20 px in the shrunk copy).
DETECTION_MAX_SIDE = 1280

#: the detectors by name (`detect.registry`); two joined by '>' chain them (the second where the
#: first finds no face)
DETECTOR_NAMES = ("mtcnn", "retinaface", "yunet")
#: the detector of models that name none (made before detectors were named), and of their galleries
LEGACY_DETECTOR = "mtcnn"
