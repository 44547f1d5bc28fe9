"""faceverify: face verification with MTCNN alignment and metric-learned ResNet embeddings.

    from faceverify import Verifier
    result = Verifier().verify("a.jpg", "b.jpg")
"""
from .errors import (FaceVerifyError, GalleryBusyError, GalleryError, ImageTooLargeError,
                     InvalidImageError, ModelError, ModelMismatchError, MultipleFacesError,
                     NoFaceError)
from .images import load_rgb

__version__ = "0.1.0"
__all__ = ["Verifier", "load_rgb", "FaceVerifyError", "InvalidImageError", "ImageTooLargeError",
           "NoFaceError", "MultipleFacesError", "ModelError", "ModelMismatchError", "GalleryError",
           "GalleryBusyError", "__version__"]


def __getattr__(name):  # keep `import faceverify` light: the verifier pulls in the backends
    if name == "Verifier":
        from .verifier import Verifier
        return Verifier
    raise AttributeError(name)
