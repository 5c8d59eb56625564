"""Volumes on a DICOMweb server (a PACS, Orthanc, ...): ``dicomweb://`` URLs wherever a volume path goes.

::

    vol = medrecon.load_volume("dicomweb://pacs:8042/dicom-web?study=1.2.3&series=1.2.3.4")
    medrecon.save_volume(rec, "dicomweb://pacs:8042/dicom-web", like=vol)   # STOW-RS, a derived series
    medrecon reconstruct m.h5 --sampler classical --output dicomweb://pacs:8042/dicom-web

URL, credentials, retries and error sentences: :mod:`medrecon.io.webclient` (``dicomweb://`` is HTTP,
``dicomwebs://`` HTTPS; credentials from ``MEDRECON_DICOMWEB_USER`` / ``_PASSWORD``, ``_TOKEN`` or a netrc
file, never from the URL).

Reading (:func:`read_dicomweb`)
    QIDO-RS finds the series (by ``series=``, or the only series of ``study=``) and lists its instances;
    their decoded size is checked against the memory budget (:mod:`medrecon.io.budget`); WADO-RS
    retrieves the series (in one request; instance by instance what that did not bring) in the transfer
    syntax the server holds, streamed into a private temporary folder,
    which the file reader (:func:`medrecon.io.dicom.read_dicom`) reads: values and geometry are exactly
    those of the same files read from disk.  The folder is removed afterwards.  An instance the server
    listed but does not return fails the read, naming the missing SOP instance UIDs.

Writing (:func:`store_volume`)
    The volume is written by the file writer (:func:`medrecon.io.dicom.write_dicom_series`: the same
    geometry, int16 + rescale and derived-series tags; the study of ``like`` / the volume's source)
    into a temporary folder, then stored with STOW-RS in batches.  The series and SOP instance UIDs are
    derived from a SHA-256 of the content (values, affine, study, source series, description), so
    storing the same result again names the same instances: the server is asked first which of them
    it holds, and only the others are sent.  Afterwards QIDO-RS checks that every instance landed; if
    some did not, :class:`~medrecon.io.webclient.DicomWebError` names the series and the SOP instance
    UIDs missing, and the same call (or command) stores only those.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medrecon.errors import InputError
from medrecon.io.webclient import Connection, DicomWebError, WebURL, connect, is_dicomweb_url, parse_url
from medrecon.volume import Volume

__all__ = ["read_dicomweb", "store_volume", "check_store_target", "series_instances", "is_dicomweb_url",
           "DicomWebError"]

_SOP_UID, _SERIES_UID, _STUDY_UID = "00080018", "0020000E", "0020000D"
_ROWS, _COLUMNS, _FRAMES, _DESC, _MODALITY = "00280010", "00280011", "00280008", "0008103E", "00080060"
_ANY_SYNTAX = (("application/dicom", "*"),)


def _val(item: dict, tag: str, default: Any = None) -> Any:
    """The first value of ``tag`` in a QIDO-RS JSON result (DICOM JSON model)."""
    v = (item.get(tag) or {}).get("Value")
    return v[0] if v else default


def _batch_size() -> int:
    raw = os.environ.get("MEDRECON_DICOMWEB_BATCH", "16")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"MEDRECON_DICOMWEB_BATCH must be a positive integer, got {raw!r}")
    return n


# ------------------------------------------------------------------------------------------ reading
def _find_series(conn: Connection, u: WebURL, choice: str | int | None) -> tuple[str, str]:
    """(study UID, series UID) that ``u`` (and ``--series`` ``choice``) names, found with QIDO-RS."""
    where = f"on the DICOMweb server {u.base}"
    if u.series is not None:
        if choice is not None and str(choice) != u.series:
            raise InputError(f"the URL names series {u.series} and --series names {choice!r}; give one")
        found = conn.call(f"searching series {u.series}", lambda c: c.search_for_series(
            study_instance_uid=u.study, search_filters={"SeriesInstanceUID": u.series}),
            not_found=f"no series {u.series}{f' in study {u.study}' if u.study else ''} {where}")
        found = [s for s in found if _val(s, _SERIES_UID) == u.series]
        if not found:
            raise DicomWebError(f"no series {u.series}{f' in study {u.study}' if u.study else ''} {where}")
        return str(_val(found[0], _STUDY_UID) or u.study), u.series
    if u.study is None:
        raise InputError(f"the DICOMweb URL {u.shown!r} names no series: add ?study=UID&series=UID")
    found = conn.call(f"searching the series of study {u.study}",
                      lambda c: c.search_for_series(study_instance_uid=u.study),
                      not_found=f"no study {u.study} {where}")
    if not found:
        raise DicomWebError(f"no study {u.study} {where}")
    listing = [(str(_val(s, _SERIES_UID)), str(_val(s, _DESC, "")), str(_val(s, _MODALITY, ""))) for s in found]
    if choice is None and len(listing) == 1:
        return u.study, listing[0][0]
    shown = "; ".join(f"[{i}] {uid} '{d}' {m}" for i, (uid, d, m) in enumerate(listing))
    if choice is None:
        raise InputError(f"study {u.study} {where} holds {len(listing)} series; add series=UID to the URL "
                         f"(or --series INDEX|UID|DESCRIPTION): {shown}")
    c = str(choice).strip()
    if c.isdigit() and len(c) < 6:
        if int(c) < len(listing):
            return u.study, listing[int(c)][0]
    else:
        hits = [s for s in listing if c in (s[0], s[1])]
        if len(hits) == 1:
            return u.study, hits[0][0]
    raise InputError(f"--series {c!r} picks none (or several) of the series of study {u.study}: {shown}")


def series_instances(conn: Connection, study: str, series: str, fields=None) -> list[dict]:
    """QIDO-RS: the instances of ``series`` in ``study`` (all of them, paging through the results)."""
    return conn.call(f"listing the instances of series {series}", lambda c: c.search_for_instances(
        study_instance_uid=study, series_instance_uid=series, fields=fields, get_remaining=True),
        not_found=f"no series {series} in study {study} on the DICOMweb server {conn.url.base}")


def read_dicomweb(url: Any, series: str | int | None = None) -> Volume:
    """Read the series a ``dicomweb://`` URL names (see the module doc).  ``meta["source"]`` is the URL
    with both UIDs, ``meta["source_format"]`` ``"dicomweb"``; the rest as :func:`read_dicom` gives it."""
    from medrecon.io.budget import array_bytes, require
    from medrecon.io.dicom import read_dicom

    u = parse_url(url)
    conn = connect(u)
    study, series_uid = _find_series(conn, u, series)
    insts = series_instances(conn, study, series_uid, fields=["Rows", "Columns", "NumberOfFrames"])
    if not insts:
        raise DicomWebError(f"series {series_uid} on the DICOMweb server {u.base} holds no instances")
    n_px = sum(int(_val(i, _ROWS, 0) or 0) * int(_val(i, _COLUMNS, 0) or 0) * int(_val(i, _FRAMES, 1) or 1)
               for i in insts)
    require(array_bytes((n_px,), 4) * 2, f"series {series_uid} on {u.base} ({len(insts)} instances)")
    sops = [str(_val(i, _SOP_UID)) for i in insts]
    with tempfile.TemporaryDirectory(prefix="medrecon-dicomweb-") as tmp:
        got = _retrieve(conn, study, series_uid, sops, Path(tmp))
        missing = [s for s in sops if s not in got]
        if missing:
            raise DicomWebError(
                f"the DICOMweb server {u.base} listed {len(sops)} instances of series {series_uid} but returned only "
                f"{len(sops) - len(missing)}; missing SOP instance UIDs: {_uid_list(missing)}",
                missing=missing, series=series_uid)
        vol = read_dicom(tmp)
    meta = dict(vol.meta)
    meta.update(source=_series_url(u, study, series_uid), source_format="dicomweb", source_files=[], study_uid=study)
    return Volume(vol.data, vol.affine, meta)


def _retrieve(conn: Connection, study: str, series: str, sops: list[str], tmp: Path) -> set[str]:
    """WADO-RS: write the listed instances ``sops`` of ``series`` into ``tmp`` as the server holds them;
    returns the SOP instance UIDs written.  The whole series in one answer first (one request: a server
    answers it much faster than instance by instance); what that did not bring (or all of it, when the
    server refuses series retrieval), instance by instance; an instance the server does not have (404) is
    left out, any other error raises."""
    index = {sop: k for k, sop in enumerate(sops)}
    got: set[str] = set()

    def keep(ds) -> None:
        sop = str(getattr(ds, "SOPInstanceUID", ""))
        if str(getattr(ds, "SeriesInstanceUID", "")) != series:
            raise DicomWebError(f"the DICOMweb server {conn.url.base} returned an instance of another series than "
                                f"{series}", kind="answer")
        if sop in index:  # one not listed (stored since the listing) is not part of what was asked for
            ds.save_as(tmp / f"{index[sop]:06d}.dcm", enforce_file_format=True)
            got.add(sop)

    def whole(client) -> None:
        for ds in client.iter_series(study, series, media_types=_ANY_SYNTAX):
            keep(ds)

    try:
        conn.call(f"retrieving series {series}", whole)
    except DicomWebError as exc:
        if exc.kind in ("unreachable", "auth"):
            raise
    for sop in [s for s in sops if s not in got]:
        try:
            keep(conn.call(f"retrieving instance {sop} of series {series}",
                           lambda c, s=sop: c.retrieve_instance(study, series, s, media_types=_ANY_SYNTAX)))
        except DicomWebError as exc:
            if exc.kind != "not_found":
                raise
    return got


def _uid_list(uids: list[str], limit: int = 20) -> str:
    return ", ".join(uids[:limit]) + (f", ... ({len(uids)} in all)" if len(uids) > limit else "")


# ------------------------------------------------------------------------------------------ writing
def check_store_target(url: Any) -> Connection:
    """Before any work: ``url`` is a DICOMweb output (no ``series=``) and the server answers a QIDO-RS
    query with the credentials given (one sentence otherwise).  Returns the connection."""
    u = parse_url(url)
    if u.series is not None:
        raise InputError("an output DICOMweb URL takes no series= (the derived series gets its own UID); "
                         "give the server's root and optionally study=UID")
    conn = connect(u)
    conn.call("checking the server before the run", lambda c: c.search_for_studies(limit=1))
    return conn


def _content_key(volume: Volume, study: str, src_series: str, description: str) -> str:
    """SHA-256 (hex) of what decides the derived series' content: the same result gets the same UIDs."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(volume.data, dtype=np.float32).tobytes())
    h.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    h.update("|".join((study, src_series, description)).encode())
    return h.hexdigest()


def _derived_datasets(volume: Volume, u: WebURL, like: Any, description: str | None, tmp: Path) -> list:
    """The derived series as pydicom datasets (the file writer's output) with content-derived UIDs."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from medrecon.io.dicom.write import meta_from_like, write_dicom_series

    src = meta_from_like(like) if like is not None else volume.meta
    src_study = (src.get("dicom") or {}).get("StudyInstanceUID") or src.get("study_uid")
    if u.study and src_study and u.study != src_study:
        raise InputError(f"the derived series belongs to study {src_study} (its source's) but the URL asks for "
                         f"study {u.study}; drop study= or give the source's study")
    if u.study and not src_study:  # a volume without a study (e.g. from NIfTI): put it into the one named
        src = {**src, "dicom": {**(src.get("dicom") or {}), "StudyInstanceUID": u.study}}
        like, src_study = src, u.study
    folder = write_dicom_series(volume, tmp / "series", like=like, description=description)
    datasets = [dcmread(f) for f in sorted(folder.glob("IM*.dcm"))]
    ds0 = datasets[0]
    key = _content_key(volume, str(src_study or ""), str(src.get("series_uid") or ""), str(ds0.SeriesDescription))
    series_uid = generate_uid(entropy_srcs=[key, "series"])
    study_uid = src_study or generate_uid(entropy_srcs=[key, "study"])
    for_uid = (src.get("dicom") or {}).get("FrameOfReferenceUID") or generate_uid(entropy_srcs=[key, "frame"])
    for k, ds in enumerate(datasets):
        sop = generate_uid(entropy_srcs=[key, "instance", str(k)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series_uid, study_uid, for_uid
    return datasets


def store_volume(volume: Volume, url: Any, overwrite: bool = False, like: Any = None,
                 description: str | None = None) -> str:
    """Store ``volume`` as a new derived series on the DICOMweb server ``url`` names (STOW-RS).

    Parameters
    ----------
    volume : Volume
    url : str
        ``dicomweb[s]://HOST[:PORT]/PATH`` (optionally ``?study=UID``: the study the series must
        belong to; a volume without a study of its own is put into it).
    overwrite : bool
        Accepted for the common signature; nothing on a server is ever replaced (an instance
        already there is the same content, see the module doc, and is not sent again).
    like : Volume, dict, str or Path, optional
        Where patient / study tags come from, as for :func:`medrecon.save_volume`.
    description : str, optional
        SeriesDescription (default ``"<source description> (medrecon)"``).

    Returns the URL of the stored series (``...?study=UID&series=UID``).  Raises
    :class:`~medrecon.io.webclient.DicomWebError` when the server cannot be reached, refuses the
    credentials or the upload, naming the SOP instance UIDs that did not land; the same call then
    sends only those.
    """
    del overwrite  # nothing on the server is replaced: same content, same UIDs
    u = parse_url(url)
    if u.series is not None:
        raise InputError("an output DICOMweb URL takes no series= (the derived series gets its own UID)")
    conn = connect(u)
    with tempfile.TemporaryDirectory(prefix="medrecon-dicomweb-") as tmp:
        datasets = _derived_datasets(volume, u, like, description, Path(tmp))
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    target = f"series {series} of study {study} on {u.base}"
    expected = [str(ds.SOPInstanceUID) for ds in datasets]
    present = {str(_val(i, _SOP_UID)) for i in _listing_or_empty(conn, study, series)}
    foreign = present - set(expected)
    if foreign:
        raise DicomWebError(f"{target} already holds {len(foreign)} instance(s) that are not this result's; "
                            "nothing was stored", series=series)
    todo = [ds for ds in datasets if str(ds.SOPInstanceUID) not in present]
    first_error: DicomWebError | None = None
    n = _batch_size()
    for b in range(0, len(todo), n):
        batch = todo[b:b + n]
        try:
            conn.call(f"storing {len(batch)} instance(s) of series {series}",
                      lambda c, batch=batch: c.store_instances(batch, study_instance_uid=study))
        except DicomWebError as exc:
            first_error = first_error or exc
            if exc.kind in ("unreachable", "auth"):
                break  # the server is gone or refuses this user: the check below says what landed
    try:
        present = {str(_val(i, _SOP_UID)) for i in _listing_or_empty(conn, study, series)}
    except DicomWebError as exc:
        first_error = first_error or exc
        present = set(expected) - {str(ds.SOPInstanceUID) for ds in todo}  # only what was there before
    missing = [s for s in expected if s not in present]
    if missing:
        why = f" ({str(first_error).rstrip('.')})" if first_error is not None else ""
        landed = len(expected) - len(missing)
        raise DicomWebError(
            f"{len(missing)} of {len(expected)} instances of the derived {target} did not land{why}; "
            f"{'nothing of it is on the server' if not landed else f'{landed} are there'}; missing SOP instance "
            f"UIDs: {_uid_list(missing)}; run the same command again to store only those",
            missing=missing, series=series)
    return _series_url(u, study, series)


def _series_url(u: WebURL, study: str, series: str) -> str:
    """``dicomweb[s]://HOST[:PORT]/PATH?study=UID&series=UID`` (no credentials: a URL never holds them)."""
    scheme = "dicomwebs" if u.base.startswith("https") else "dicomweb"
    return f"{scheme}://{u.base.split('://', 1)[1]}?study={study}&series={series}"


def _listing_or_empty(conn: Connection, study: str, series: str) -> list[dict]:
    """The instances of a series, ``[]`` when the server answers 404 (no such study / series yet)."""
    try:
        return series_instances(conn, study, series, fields=["SOPInstanceUID"])
    except DicomWebError as exc:
        if exc.kind == "not_found":
            return []
        raise
