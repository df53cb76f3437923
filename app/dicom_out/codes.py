"""Codes of the DICOM objects cxr-review writes.

Classes and anatomy use SNOMED CT (SCT) and DICOM (DCM) codes, so any viewer shows a meaningful
value; what has no standard code (the model's probabilities, the lung-focus score, the reviewer's
verdict on a heat map) uses the private coding scheme `99CXR` (the `99` prefix marks a private
scheme, PS3.16 8.2), declared in each SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from ml import CLASSES

SCHEME = "99CXR"
SCHEME_NAME = "cxr-review codes"
SCHEME_ORGANIZATION = "cxr-review"


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


CLASS_CODES: dict[str, CodedConcept] = {
    "normal": CodedConcept("17621005", "SCT", "Normal"),
    "bacterial": CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
    "viral": CodedConcept("75570004", "SCT", "Viral pneumonia"),
    "covid19": CodedConcept("840539006", "SCT", "COVID-19"),
}
assert tuple(CLASS_CODES) == CLASSES

PROBABILITY_CODES: dict[str, CodedConcept] = {
    c: private(f"PROB-{c.upper()}", f"AI probability of {CLASS_CODES[c].meaning.lower()}") for c in CLASSES
}
PROCEDURE = CodedConcept("399208008", "SCT", "Plain chest X-ray")
FINDING_TYPE = CodedConcept("168731009", "SCT", "Chest X-ray")
PREDICTED_CLASS = private("PREDICTED-CLASS", "AI predicted class")
LUNG_FOCUS = private("LUNG-FOCUS", "Share of heat-map evidence inside the lungs")
LUNG_FOCUS_THRESHOLD = private("LUNG-FOCUS-THRESHOLD", "Lung-focus flag threshold")
LUNG_FOCUS_FLAG = private("LUNG-FOCUS-FLAG", "Heat-map evidence mostly outside the lungs")
ERROR_RISK = private("ERROR-RISK", "Estimated risk that the AI result is wrong")
WARNING = private("WARNING", "AI result warning")
REVIEW_VERDICT = private("CAM-VERDICT", "Reviewer verdict on the heat map")
VERDICT_CODES = {
    "approve": private("CAM-APPROVED", "Heat map clinically valid"),
    "reject": private("CAM-REJECTED", "Heat map not clinically valid"),
}
REVIEW_REASON = private("CAM-REASON", "Reason given for the heat-map verdict")
REASON_CODES = {
    "outside_lungs": private("REASON-OUTSIDE-LUNGS", "Evidence outside the lungs"),
    "text_or_marker": private("REASON-TEXT-MARKER", "Evidence on text or a marker"),
    "device_or_line": private("REASON-DEVICE-LINE", "Evidence on a device or line"),
    "image_border": private("REASON-IMAGE-BORDER", "Evidence on the image border"),
    "other": private("REASON-OTHER", "Other reason"),
}
REVIEW_DIAGNOSIS = private("REVIEW-DIAGNOSIS", "Reviewer diagnosis")
REVIEW_COMMENT = codes.DCM.Comment
YES = codes.SCT.Yes
NO = codes.SCT.No
NO_UNITS = codes.UCUM.NoUnits
LUNG = codes.SCT.Lung
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
AI_FAMILY = codes.cid7162.ArtificialIntelligence
DEVICE = codes.DCM.Device
PERSON = codes.DCM.Person


def coding_scheme_identification() -> list[dict[str, str]]:
    """The Coding Scheme Identification Sequence item (as keyword → value) declaring `99CXR`."""
    return [
        {
            "CodingSchemeDesignator": SCHEME,
            "CodingSchemeName": SCHEME_NAME,
            "CodingSchemeResponsibleOrganization": SCHEME_ORGANIZATION,
        }
    ]
