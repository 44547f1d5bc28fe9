"""Typed errors: every failure a user can cause has its own class and an actionable message.

The CLI maps any `FaceVerifyError` to exit code 2 with its one-line message; anything else is a bug
(exit 1).
"""


class FaceVerifyError(Exception):
    """Base class for errors caused by input the user can fix."""


class InvalidImageError(FaceVerifyError, ValueError):
    """The input is not a decodable image (corrupt, truncated, unsupported, wrong type)."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class NoFaceError(FaceVerifyError):
    """No face passed the detector's confidence threshold."""


class MultipleFacesError(FaceVerifyError):
    """Several prominent faces were found and the policy does not allow guessing which one."""

    def __init__(self, message: str, faces=()):
        super().__init__(message)
        self.faces = list(faces)


class ModelError(FaceVerifyError):
    """A model file is missing, unreadable or not a faceverify model."""


class ModelMismatchError(FaceVerifyError):
    """Embeddings or files produced by a different model were mixed with this one."""


class GalleryError(FaceVerifyError):
    """The gallery database is missing, corrupt, foreign or inconsistent with the request."""


class GalleryBusyError(GalleryError):
    """Another process held the gallery's write lock for longer than the timeout."""


class NotInGalleryError(GalleryError):
    """The person, photo or key asked for is not in the gallery."""


class AlreadyInGalleryError(GalleryError):
    """The name asked for is taken (a person, or a key in force)."""


class InvalidNameError(GalleryError, ValueError):
    """A person's name the gallery will not hold: empty, too long, control characters, path
    separators or invisible formatting characters."""


class AccessError(FaceVerifyError):
    """Who is asking may not: base of the authentication and authorisation errors."""


class AuthenticationError(AccessError):
    """No credentials, wrong ones, or a revoked key."""


class PermissionDeniedError(AccessError):
    """Valid credentials whose scopes do not cover the request."""


class ExposureError(FaceVerifyError):
    """A server asked to listen beyond this machine without a login to protect it."""


def error_from_name(name: str, message: str) -> FaceVerifyError:
    """The typed error a worker reported as (class name, message), rebuilt on the other side."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, FaceVerifyError)):
        cls = FaceVerifyError
    return cls(message)
