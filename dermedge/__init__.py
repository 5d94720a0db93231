"""dermedge: skin-lesion photos to a quantized CNN on a field device.

A screening aid for referral decisions, never a diagnosis.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Screening aid only - not a diagnosis. A trained clinician must examine any lesion of concern; "
    "refer whenever in doubt."
)
CLASSES = ("benign", "malignant")
