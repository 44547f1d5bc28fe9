"""The web UI: a thin Gradio layer over `Verifier` and `Gallery`.

Binds to 127.0.0.1 and will not listen beyond it, or share publicly, without a login (`launch`'s
`auth_file`; every page and every programmatic endpoint then asks for it) unless told `insecure`;
uploads are size-limited and requests queue with a concurrency limit. Enrolments, removals and
identifications reach the gallery's audit trail under the logged-in user (`ui:<user>`). Uploads reach the library undecoded (`PhotoInput`), so its
`load_rgb` checks the pixel count from the header before decoding and words every error; each user
mistake surfaces as a readable message (never a stack trace, in the page or the console). Several
faces in a photo are shown and the user picks one; every decision is the library's.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from faceverify import FaceVerifyError, Verifier, load_rgb
from faceverify.access import UserFile, check_exposure
from faceverify.bundled import weights_dir
from faceverify.gallery import DEFAULT_GALLERY, Gallery
from faceverify.gallery.backends import is_postgres
from faceverify.metrics import far_at_threshold
from faceverify.verifier import default_model_path

MAX_UPLOAD = "10mb"
CONCURRENCY = 2
MODEL_CARD = weights_dir() / "MODEL_CARD.md"
CROP_ZOOM = 2  # aligned crops (the first template of the model, e.g. 112×112) are shown twice as large


def unreliable(result, what: str) -> str:
    """The paragraph a verdict gets when a face is below the model's quality floor ("" otherwise)."""
    if result.reliable:
        return ""
    return (f"\n\n**Unreliable:** {'; '.join(result.problems)}. {what} on such a photo is often wrong: "
            "use a clearer, frontal one.")


def user_error(message: str) -> gr.Error:
    """A message for the user; the console gets no traceback for it (it is not a server fault)."""
    return gr.Error(message, print_exception=False)


class PhotoInput(gr.Image):
    """`gr.Image` that hands the app the uploaded file's path without opening it: Gradio's own
    preprocessing decodes first (a 144 MP JPEG becomes 432 MB before any check) and answers
    unreadable files with its raw "Could not preprocess" message. A template component: the
    browser renders it with gr.Image's own frontend."""

    is_template = True

    def preprocess(self, payload):
        if payload is None or payload.path is None:  # nothing, or an inline data: URL
            return super().preprocess(payload)
        return payload.path


class OutputFiles:
    """Result images as files named by their content, written atomically: Gradio rewrites an
    array output in place into a cache file named by its hash, so two requests with identical
    results raced (one truncating the file another was streaming: h11 "Too little data for
    declared Content-Length"). A file that already exists is never written again."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="faceverify-ui-"))

    def __call__(self, rgb: np.ndarray) -> str:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        data = encoded.tobytes()
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return str(path)


def actor(request: gr.Request | None) -> str:
    """Who the audit trail credits with a request: the logged-in user (`ui` without a login)."""
    user = getattr(request, "username", None) if request is not None else None
    return f"ui:{user}" if user else "ui"


class FaceApp:
    """State shared by the tabs: one verifier, one gallery file (opened per request: thread-safe)."""

    def __init__(self, verifier: Verifier, gallery: str | Path, outputs: OutputFiles | None = None):
        self.verifier, self.location = verifier, str(gallery)  # a str: Path folds postgresql:// URLs
        self.outputs = outputs or OutputFiles()
        self._lock = threading.Lock()  # one inference at a time on the shared model
        self.roc = verifier.metadata.pairs_roc
        self.default_threshold = verifier.threshold()

    def gallery(self, request: gr.Request | None = None) -> Gallery:
        return Gallery(self.location, self.verifier, actor=actor(request))

    # ---------------------------------------------------------------- verify
    def faces(self, image):
        """Every face of one uploaded image, largest first, or a readable error."""
        if image is None:
            raise user_error("Upload or paste a photo first.")
        with self._lock:
            try:
                faces = self.verifier.all_faces(image)
            except FaceVerifyError as exc:  # name the photo as the user knows it, not by upload path
                raise user_error(str(exc).replace(str(image), Path(image).name)) from None
        if not faces:
            raise user_error("No face found in this photo: try a clearer, frontal photo.")
        return faces

    def verify(self, image_a, image_b, threshold, pick_a, pick_b):
        chosen, shown, notes = [], [], []
        for label, image, pick in (("A", image_a, pick_a), ("B", image_b, pick_b)):
            faces = self.faces(image)
            index = int(pick or 1)
            if index > len(faces):
                raise user_error(f"Photo {label} has {len(faces)} face(s); choose 1 to {len(faces)}.")
            if len(faces) > 1:
                notes.append(f"Photo {label} shows {len(faces)} faces (numbered largest first): "
                             f"comparing face {index}; change the choice below it to compare another.")
            chosen.append(faces[index - 1])
            shown.append(self.outputs(annotate(image, faces, index - 1)))
        result = self.verifier.compare(chosen[0], chosen[1], threshold)
        verdict = (f"## {'Same person' if result.same else 'Different people'}\n"
                   f"Similarity **{result.score:.3f}** {'≥' if result.same else '<'} threshold "
                   f"{result.threshold:.3f} ({self.threshold_meaning(result.threshold)}).")
        verdict += unreliable(result, "A decision")
        if notes:
            verdict += "\n\n" + "\n\n".join(notes)
        return verdict, shown[0], shown[1], self.outputs(side_by_side([f.crop for f in chosen]))

    def threshold_meaning(self, threshold: float) -> str:
        if not self.roc:
            return "no calibration data in this model"
        return f"on the dev pairs this threshold falsely accepts {100 * far_at_threshold(self.roc, threshold):.2f}% of impostors"

    # -------------------------------------------------------------- identify
    def identify(self, image, top_k, request: gr.Request = None):
        face = self.faces(image)[0]
        try:
            with self.gallery(request) as gallery, self._lock:
                (result,) = gallery.identify_faces([face], int(top_k))
                thumbs = [(gallery.thumbnail(name), f"{name}: {score:.3f}") for name, score in result.matches]
        except FaceVerifyError as exc:
            raise user_error(str(exc)) from None
        headline = (f"## {result.name}\nscore {result.score:.3f} ≥ gallery threshold {result.threshold:.3f}"
                    if result.name else f"## Unknown\nbest match {result.matches[0][0]} scores "
                    f"{result.score:.3f} < gallery threshold {result.threshold:.3f}")
        headline += unreliable(result, "An answer")
        return headline, [(self.outputs(t), c) for t, c in thumbs if t is not None]

    # ---------------------------------------------------------------- enroll
    def enroll(self, name, files, request: gr.Request = None):
        if not name or not name.strip():
            raise user_error("Give the person a name.")
        if not files:
            raise user_error("Add at least one photo.")
        uploads = [f if isinstance(f, str) else f.name for f in files]
        try:
            with self.gallery(request) as gallery, self._lock:
                report = gallery.enroll_uploads(name, [(Path(p).name, Path(p).read_bytes()) for p in uploads])
        except FaceVerifyError as exc:
            raise user_error(str(exc)) from None
        except OSError as exc:
            raise user_error(f"Could not keep the photo beside the gallery: {exc.strerror}.") from None
        rows = [[photo, "added", ""] for photo in report.added] + \
               [[photo, "rejected", why] for photo, why in report.rejected]
        summary = f"{len(report.added)} photo(s) added to **{name.strip()}**, {len(report.rejected)} rejected."
        return summary, rows, self.identity_rows()

    def identity_rows(self):
        if not (is_postgres(self.location) or Path(self.location).is_file()):
            return []
        with self.gallery() as gallery:
            return [[n, k, c] for n, k, c in gallery.identities()]

    def remove(self, name, request: gr.Request = None):
        """Remove a person (and the copies of their photos kept beside the gallery)."""
        try:
            with self.gallery(request) as gallery, self._lock:
                gallery.remove(name)
        except FaceVerifyError as exc:
            raise user_error(str(exc)) from None
        return self.identity_rows()

    # ----------------------------------------------------------------- about
    def about(self) -> str:
        meta = self.verifier.metadata
        dev = meta.dev
        lines = [f"**Model** {meta.description}; weights `{meta.short_hash}`, faces found by "
                 f"{self.verifier.detector_name}, running on {', '.join(self.verifier.providers)}."]
        if dev:
            lines.append(f"**Dev pairs (LFW folds 7-8)** accuracy {100 * dev['accuracy']:.2f}%, "
                         f"AUC {dev['auc']:.4f}, EER {100 * dev['eer']:.2f}%.")
        if MODEL_CARD.is_file():
            lines.append("---\n" + MODEL_CARD.read_text())
        return "\n\n".join(lines)


def annotate(image: np.ndarray, faces, chosen: int) -> np.ndarray:
    """The photo with numbered boxes (faces: `FaceEmbedding`s); the compared face in green."""
    canvas = np.ascontiguousarray(load_rgb(image)).copy()
    scale = max(1, round(max(canvas.shape[:2]) / 400))
    for i, found in enumerate(faces):
        x1, y1, x2, y2 = found.face.box.astype(int)
        colour = (40, 200, 40) if i == chosen else (230, 160, 0)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2 * scale)
        cv2.putText(canvas, str(i + 1), (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, 2 * scale)
    return canvas


def side_by_side(crops: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """Aligned crops next to each other, whole and enlarged, on a white background."""
    size = crops[0].shape[0] * CROP_ZOOM
    canvas = np.full((size, len(crops) * size + (len(crops) - 1) * gap, 3), 255, np.uint8)
    for i, crop in enumerate(crops):
        canvas[:, i * (size + gap):i * (size + gap) + size] = cv2.resize(
            crop, (size, size), interpolation=cv2.INTER_NEAREST)
    return canvas


def build(app: FaceApp) -> gr.Blocks:
    with gr.Blocks(title="faceverify") as demo:
        gr.Markdown("# faceverify\nFace verification and identification, on this machine.")
        with gr.Tab("Verify"):
            with gr.Row():
                image_a = PhotoInput(label="Photo A", type="filepath", sources=["upload", "clipboard", "webcam"])
                image_b = PhotoInput(label="Photo B", type="filepath", sources=["upload", "clipboard", "webcam"])
            with gr.Row():
                pick_a = gr.Number(label="Face in A (if several)", value=1, precision=0, minimum=1)
                pick_b = gr.Number(label="Face in B (if several)", value=1, precision=0, minimum=1)
            threshold = gr.Slider(-0.2, 1.0, value=app.default_threshold, step=0.005,
                                  label="Decision threshold (default: calibrated for best accuracy)")
            meaning = gr.Markdown(app.threshold_meaning(app.default_threshold))
            verify_button = gr.Button("Verify", variant="primary", elem_id="verify-button")
            verdict = gr.Markdown(elem_id="verdict")
            with gr.Row():
                shown_a = gr.Image(label="Faces found in A", interactive=False)
                shown_b = gr.Image(label="Faces found in B", interactive=False)
            crops = gr.Image(label="Aligned faces that were compared (shown ×2)",
                             interactive=False, elem_id="aligned-crops")
            threshold.change(app.threshold_meaning, threshold, meaning, api_name=False)
            verify_button.click(app.verify, [image_a, image_b, threshold, pick_a, pick_b],
                                [verdict, shown_a, shown_b, crops], api_name="verify")
        with gr.Tab("Identify"):
            query = PhotoInput(label="Who is this?", type="filepath", sources=["upload", "clipboard", "webcam"])
            top_k = gr.Slider(1, 10, value=5, step=1, label="Matches to show")
            identify_button = gr.Button("Identify", variant="primary")
            answer = gr.Markdown()
            matches = gr.Gallery(label="Best matches", columns=5, height=220, object_fit="contain")
            identify_button.click(app.identify, [query, top_k], [answer, matches], api_name="identify")
        with gr.Tab("Enroll"):
            name = gr.Textbox(label="Name")
            files = gr.File(label="Photos of this person", file_count="multiple", file_types=["image"])
            enroll_button = gr.Button("Enroll", variant="primary")
            enroll_summary = gr.Markdown()
            feedback = gr.Dataframe(headers=["photo", "result", "reason"], label="Per-photo quality check")
            people = gr.Dataframe(headers=["name", "photos", "enrolled"], label="Gallery",
                                  value=app.identity_rows)
            with gr.Row():
                to_remove = gr.Textbox(label="Remove identity (name)")
                remove_button = gr.Button("Remove")
            enroll_button.click(app.enroll, [name, files], [enroll_summary, feedback, people], api_name="enroll")
            remove_button.click(app.remove, to_remove, people, api_name="remove")
        with gr.Tab("About"):
            gr.Markdown(app.about())
    return demo


def launch(model=None, gallery: Path = DEFAULT_GALLERY, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, flip: bool | None = None, detector: str | None = None,
           auth_file: Path | None = None, insecure: bool = False) -> None:
    """Serve the UI. Beyond the loopback or shared, a login (`auth_file`: `UserFile`) is required
    unless `insecure` (`access.check_exposure`)."""
    users = UserFile(auth_file) if auth_file else None
    if users is not None and not users.users:
        raise FaceVerifyError(f"{auth_file}: no users yet; add one with `faceverify users add NAME --auth-file {auth_file}`")
    check_exposure(host, share, login=users is not None, insecure=insecure)
    verifier = Verifier(model or default_model_path(), flip=flip, detector=detector)
    outputs = OutputFiles()
    demo = build(FaceApp(verifier, gallery, outputs))
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=32)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD,
                show_error=True, allowed_paths=[str(outputs.folder)],
                auth=users.check if users is not None else None,
                auth_message="faceverify: log in (users are managed with `faceverify users`)")
