"""faceverify: face verification with MTCNN alignment and metric-learned ResNet embeddings.

    from faceverify import Verifier
    result = Verifier().verify("a.jpg", "b.jpg")
"""
from .errors import (AccessError, AlreadyInGalleryError, AuthenticationError, ExposureError,
                     FaceVerifyError, GalleryBusyError, GalleryError, ImageTooLargeError,
                     InvalidImageError, InvalidNameError, ModelError, ModelMismatchError,
                     MultipleFacesError, NoFaceError, NotInGalleryError, PermissionDeniedError)

__version__ = "0.1.0"
__all__ = ["Verifier", "load_rgb", "FaceVerifyError", "InvalidImageError", "ImageTooLargeError",
           "NoFaceError", "MultipleFacesError", "ModelError", "ModelMismatchError", "GalleryError",
           "GalleryBusyError", "NotInGalleryError", "AlreadyInGalleryError", "InvalidNameError",
           "AccessError", "AuthenticationError", "PermissionDeniedError", "ExposureError", "__version__"]


def __getattr__(name):  # keep `import faceverify` light (the CLI starts through it)
    if name == "Verifier":
        from .verifier import Verifier
        return Verifier
    if name == "load_rgb":
        from .images import load_rgb
        return load_rgb
    raise AttributeError(name)
