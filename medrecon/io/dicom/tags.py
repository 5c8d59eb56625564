"""DICOM tag helpers shared by the reader and the writer: which tags a derived series keeps,
SOP class UIDs, and pydicom values as JSON-able values."""

from __future__ import annotations

from typing import Any

__all__ = ["KEEP_TAGS", "INFO_TAGS", "CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "SECONDARY_CAPTURE",
           "DICOMDIR_SOP", "import_pydicom", "json_value", "tag_values"]

# tags a derived series keeps from its source (patient, study, frame of reference, equipment)
KEEP_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "BodyPartExamined",
    "PatientPosition", "KVP", "ConvolutionKernel", "MagneticFieldStrength",
    # acquisition attributes the CT / MR image modules require (type 1 / 2)
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "EchoTrainLength", "InversionTime", "ImagingFrequency", "ImagedNucleus",
    "SpecificCharacterSet",
)
# informative tags stored in meta["dicom"] but not blindly copied
INFO_TAGS = (
    "Modality", "SOPClassUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber",
    "SliceThickness", "SpacingBetweenSlices", "WindowCenter", "WindowWidth", "RescaleType",
    "GantryDetectorTilt", "ImageType", "FlipAngle",
    "SeriesDate", "SeriesTime", "AcquisitionNumber",
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DICOMDIR_SOP = "1.2.840.10008.1.3.10"


def import_pydicom():
    """pydicom, imported on first use (``import medrecon.io`` stays cheap)."""
    import pydicom

    return pydicom


def json_value(v: Any) -> Any:
    """A pydicom element value as a JSON-able value."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    if isinstance(v, (MultiValue, list, tuple)):
        return [json_value(e) for e in v]
    if isinstance(v, PersonName):
        return str(v)
    if isinstance(v, bytes):
        return None
    if isinstance(v, float):  # DSfloat is a float
        return float(v)
    if isinstance(v, bool):
        return v
    if isinstance(v, int):  # IS is an int
        return int(v)
    if isinstance(v, str):
        return str(v)
    return None



def tag_values(ds, keep_empty_lists: bool = False) -> dict[str, Any]:
    """The :data:`KEEP_TAGS` and :data:`INFO_TAGS` present in ``ds`` (keyword -> JSON-able value).

    Values that are None (bytes, unknown types) or ``""`` are left out, and so is ``[]``
    unless ``keep_empty_lists``.
    """
    tags: dict[str, Any] = {}
    for kw in KEEP_TAGS + INFO_TAGS:
        if kw in ds:
            v = json_value(ds.data_element(kw).value)
            if v is not None and v != "" and (keep_empty_lists or v != []):
                tags[kw] = v
    return tags
