"""fitm: near-distribution novelty detection with fakes from an early-stopped score model (FITYMI).

    import fitm
    model = fitm.Detector.from_config("digits").fit(normal_images)
    scores, anomalous = model.predict(new_images)
"""

__version__ = "0.1.0"

from fitm.api import Detector  # noqa: E402  (light: heavy modules load when a Detector works)
from fitm.errors import FitmError  # noqa: E402

__all__ = ["Detector", "FitmError", "__version__"]
