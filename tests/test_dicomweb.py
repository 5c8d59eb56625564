"""DICOMweb volumes (medrecon.io.dicomweb) against a real Orthanc with its DICOMweb plugin.

The server: ``MEDRECON_TEST_ORTHANC`` (its DICOMweb root, e.g. ``http://127.0.0.1:18042/dicom-web``) with
``MEDRECON_TEST_ORTHANC_USER`` / ``_PASSWORD`` (what ``eval "$(.ci/orthanc.sh env)"`` sets, as ``.ci/run``
does); without them, one is started here through ``.ci/orthanc.sh`` when the Debian packages ``orthanc``
and ``orthanc-dicomweb`` are installed.  Without either the server tests skip, saying why -- except
under ``CI=true``, where they fail: CI must never skip them.

Faults a server may show (a refused or partial upload, an instance it lists but does not return, a
transient 503) come from a small forwarding proxy in front of the real Orthanc (:class:`_Proxy`).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "orthanc.sh"


# ------------------------------------------------------------------------------------ the server
def _no_server(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but no Orthanc for the DICOMweb tests: {reason}")
    pytest.skip(f"no Orthanc for the DICOMweb tests ({reason}); install the Debian packages orthanc and "
                "orthanc-dicomweb, or start one with .ci/orthanc.sh start and eval \"$(.ci/orthanc.sh env)\"")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """(DICOMweb root over http, user, password) of a running Orthanc."""
    if os.environ.get("CI") != "true":
        pytest.importorskip("dicomweb_client")
    url = os.environ.get("MEDRECON_TEST_ORTHANC")
    if url:
        user, password = os.environ.get("MEDRECON_TEST_ORTHANC_USER"), os.environ.get("MEDRECON_TEST_ORTHANC_PASSWORD")
        if not (user and password):
            _no_server("MEDRECON_TEST_ORTHANC is set without MEDRECON_TEST_ORTHANC_USER / _PASSWORD")
        yield url.rstrip("/"), user, password
        return
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        _no_server("MEDRECON_TEST_ORTHANC is not set and no Orthanc binary is installed")
    env = {**os.environ, "MEDRECON_ORTHANC_DIR": str(tmp_path_factory.mktemp("orthanc") / "server")}
    p = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        _no_server(f".ci/orthanc.sh start failed: {p.stderr.strip()[-300:]}")
    try:
        lines = subprocess.run(["bash", str(SCRIPT), "env"], env=env, capture_output=True, text=True, check=True)
        vals = dict(re.findall(r"export (\w+)=(\S+)", lines.stdout))
        yield (vals["MEDRECON_TEST_ORTHANC"], vals["MEDRECON_TEST_ORTHANC_USER"],
               vals["MEDRECON_TEST_ORTHANC_PASSWORD"])
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)


def _web(http_url: str, query: str = "") -> str:
    """The dicomweb:// URL of an http:// DICOMweb root."""
    return "dicomweb://" + http_url.split("://", 1)[1] + (f"?{query}" if query else "")


def _client(url: str, user: str, password: str):
    import requests
    from dicomweb_client import DICOMwebClient

    s = requests.Session()
    s.auth = (user, password)
    s.trust_env = False
    return DICOMwebClient(url, session=s)


@pytest.fixture
def creds(orthanc, monkeypatch):
    """The server's credentials in medrecon's environment variables (this process and its children)."""
    _, user, password = orthanc
    monkeypatch.setenv("MEDRECON_DICOMWEB_USER", user)
    monkeypatch.setenv("MEDRECON_DICOMWEB_PASSWORD", password)
    monkeypatch.delenv("MEDRECON_DICOMWEB_TOKEN", raising=False)
    return user, password


@pytest.fixture(scope="module")
def sample_series(orthanc, tmp_path_factory):
    """The shipped CT sample as a DICOM folder, uploaded as it is (STOW-RS of its files) to the server.
    Returns (folder, study UID, series UID)."""
    import pydicom

    import medrecon
    from medrecon.data import load_ct_sample

    folder = tmp_path_factory.mktemp("sample") / "series"
    medrecon.save_volume(load_ct_sample(), folder)
    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    url, user, password = orthanc
    _client(url, user, password).store_instances(datasets)
    return folder, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)


def _cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """``medrecon ARGS`` as a real process."""
    return subprocess.run([sys.executable, "-m", "medrecon.cli.main", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd)


def _one_sentence(p: subprocess.CompletedProcess, *secrets: str) -> str:
    """Exit 2, one line on stderr, no traceback, none of ``secrets`` anywhere; the line."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "warning" not in ln]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for s in secrets:
        assert s not in p.stderr and s not in p.stdout
    return lines[0]


# ---------------------------------------------------------------------------- no server needed
def test_urls_schemes_and_refusals():
    from medrecon.errors import InputError
    from medrecon.io.registry import output_format
    from medrecon.io.webclient import is_dicomweb_url, parse_url

    u = parse_url("dicomweb://pacs.example:8042/dicom-web/?study=1.2.3&series=1.2.3.4")
    assert (u.base, u.study, u.series) == ("http://pacs.example:8042/dicom-web", "1.2.3", "1.2.3.4")
    assert parse_url("dicomwebs://pacs.example/dw?series=1.2").base == "https://pacs.example/dw"
    assert parse_url(Path("dicomweb://h:1/dw?series=1.2")).base == "http://h:1/dw"  # a path object's dicomweb:/h
    assert is_dicomweb_url(Path("dicomweb://h/x")) and not is_dicomweb_url("dicom/series")
    assert output_format("dicomweb://h:1/dw") == "dicomweb" and output_format("out/series") == "dicom"
    for bad, says in (("dicomweb://bob:s3cr3t@h/dw?series=1.2", "must not hold credentials"),
                      ("dicomweb://h/dw?serie=1.2", "unknown key 'serie'"),
                      ("dicomweb://h/dw?series=abc", "not a DICOM UID"),
                      ("dicomweb://:8042/dw?series=1.2", "names no host")):
        with pytest.raises(InputError, match=says) as err:
            parse_url(bad)
        assert "s3cr3t" not in str(err.value)


def test_credentials_from_environment_and_netrc(tmp_path, monkeypatch):
    pytest.importorskip("dicomweb_client")
    from medrecon.errors import InputError
    from medrecon.io.webclient import connect

    for k in ("MEDRECON_DICOMWEB_USER", "MEDRECON_DICOMWEB_PASSWORD", "MEDRECON_DICOMWEB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine pacs.example login alice password n3tpass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("MEDRECON_NETRC", str(netrc))
    c = connect("dicomweb://pacs.example:8042/dw?series=1.2")
    assert c.client._session.auth == ("alice", "n3tpass") and "netrc" in c.source
    assert connect("dicomweb://other.example/dw").client._session.auth is None  # no entry: none sent
    monkeypatch.setenv("MEDRECON_DICOMWEB_USER", "bob")
    monkeypatch.setenv("MEDRECON_DICOMWEB_PASSWORD", "envpass")
    assert connect("dicomweb://pacs.example/dw").client._session.auth == ("bob", "envpass")
    monkeypatch.setenv("MEDRECON_DICOMWEB_TOKEN", "tok")
    c = connect("dicomweb://pacs.example/dw")
    assert c.client._session.headers["Authorization"] == "Bearer tok" and c.client._session.auth is None
    monkeypatch.delenv("MEDRECON_DICOMWEB_TOKEN")
    monkeypatch.delenv("MEDRECON_DICOMWEB_PASSWORD")
    with pytest.raises(InputError, match="set both"):
        connect("dicomweb://pacs.example/dw")


# ---------------------------------------------------------------------------------- round trips
def test_pulled_series_equals_the_file_read(orthanc, sample_series, creds):
    import medrecon

    folder, study, series = sample_series
    ref = medrecon.load_volume(folder)
    for query, pick in ((f"study={study}&series={series}", None), (f"series={series}", None),
                        (f"study={study}", series)):  # --series picks one of the study's series
        vol = medrecon.load_volume(_web(orthanc[0], query), series=pick)
        assert vol.shape == ref.shape
        assert np.array_equal(vol.data, ref.data)  # values exact
        assert np.max(np.abs(vol.affine - ref.affine)) <= 1e-4  # mm
        assert vol.meta["source_format"] == "dicomweb" and vol.meta["series_uid"] == series
        assert vol.meta["source"] == _web(orthanc[0], f"study={study}&series={series}")
        assert vol.meta["source_sop_instance_uids"] == ref.meta["source_sop_instance_uids"]
        assert creds[1] not in repr(vol.meta)


@pytest.mark.slow  # three CLI processes that import torch
def test_reconstruct_from_the_server_and_store_back(orthanc, sample_series, creds, tmp_path):
    """Real CLI processes: simulate from the server, reconstruct (classical), store the result with
    STOW-RS; read back by pydicom through WADO-RS as a derived series of the original study."""
    import medrecon

    folder, study, series = sample_series
    src = _web(orthanc[0], f"study={study}&series={series}")
    p = _cli("simulate", "ct.parallel", "-i", src, "-o", tmp_path / "m.h5", "-p", "n_views=20", "--noise", "0.01")
    assert p.returncode == 0, p.stderr
    p = _cli("reconstruct", tmp_path / "m.h5", "--sampler", "classical", "-q", "-o", _web(orthanc[0]))
    assert p.returncode == 0, p.stderr
    out = re.search(r"wrote (dicomweb://\S+):\s", p.stdout).group(1)
    assert f"study={study}&series=" in out and series not in out
    derived = out.split("series=")[1]
    assert creds[1] not in p.stdout + p.stderr

    datasets = _client(*orthanc).retrieve_series(study, derived)
    ref = medrecon.load_volume(folder)
    assert len(datasets) == ref.shape[0]
    for ds in datasets:
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.StudyInstanceUID == study and ds.SeriesInstanceUID == derived != series
        assert ds.FrameOfReferenceUID == ref.meta["dicom"]["FrameOfReferenceUID"]
        assert ds.Modality == "CT" and "classical" in ds.SeriesDescription
        ds.pixel_array  # noqa: B018 - decodes
    by_pos = {round(float(ds.ImagePositionPatient[2]), 3): ds for ds in datasets}
    sources = [by_pos[k].SourceImageSequence[0].ReferencedSOPInstanceUID for k in sorted(by_pos)]
    assert sorted(sources) == sorted(ref.meta["source_sop_instance_uids"])
    back = medrecon.load_volume(out)
    assert np.max(np.abs(back.affine - ref.affine)) <= 1e-4
    local = medrecon.reconstruct(medrecon.load_measurement(tmp_path / "m.h5"), sampler="classical")
    slope = float(datasets[0].RescaleSlope)  # int16 + one slope for the series: |error| <= slope / 2
    assert back.shape == local.shape and np.max(np.abs(back.data - local.data)) <= slope / 2 + 1e-2

    again = _cli("reconstruct", tmp_path / "m.h5", "--sampler", "classical", "-q", "-o", _web(orthanc[0]))
    assert again.returncode == 0 and out in again.stdout  # the same result names the same series: nothing added
    assert len(_client(*orthanc).search_for_instances(study, derived)) == ref.shape[0]


# ------------------------------------------------------------------------------------ bad input
def test_bad_server_input_is_one_sentence(orthanc, sample_series, creds, tmp_path):
    _, study, series = sample_series
    url = orthanc[0]
    port = _free_port()
    cases = {
        "wrong password": (_web(url, f"series={series}"), {"MEDRECON_DICOMWEB_PASSWORD": "wrong-Pa55"},
                           "credentials from MEDRECON_DICOMWEB_USER / MEDRECON_DICOMWEB_PASSWORD were refused"),
        "no credentials": (_web(url, f"series={series}"), {"MEDRECON_DICOMWEB_USER": "", "MEDRECON_DICOMWEB_PASSWORD": "",
                                                           "MEDRECON_NETRC": str(_empty(tmp_path))},
                           "no credentials were sent"),
        "unreachable": (f"dicomweb://127.0.0.1:{port}/dicom-web?series={series}", {"MEDRECON_DICOMWEB_RETRIES": "1"},
                        "cannot reach the DICOMweb server"),
        "unknown study": (_web(url, "study=1.2.3.999"), {}, "no study 1.2.3.999"),
        "unknown series": (_web(url, f"study={study}&series=1.2.3.999"), {}, "no series 1.2.3.999"),
        "no series": (_web(url), {}, "names no series"),
        "password in URL": (f"dicomweb://bob:hunter22@127.0.0.1:{port}/dw?series=1.2", {}, "must not hold credentials"),
    }
    for name, (target, env, says) in cases.items():
        p = _cli("info", target, env=env)
        line = _one_sentence(p, creds[1], "wrong-Pa55", "hunter22")
        assert says in line, (name, line)
    # an output on a server that refuses the credentials: exit 2 before any work, nothing written locally
    (tmp_path / "m.h5").write_bytes(b"")  # the server is checked before the measurement is read
    p = _cli("reconstruct", tmp_path / "m.h5", "--sampler", "classical", "-o", _web(url),
             env={"MEDRECON_DICOMWEB_PASSWORD": "wrong-Pa55"})
    assert "were refused" in _one_sentence(p, creds[1], "wrong-Pa55")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["empty-netrc", "m.h5"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _empty(tmp_path: Path) -> Path:
    f = tmp_path / "empty-netrc"
    f.write_text("")
    f.chmod(0o600)
    return f


class _Proxy:
    """A forwarding HTTP proxy in front of the real server that can fail requests on purpose:
    ``rule(method, path, n)`` -> None (forward) or an HTTP status to answer instead; ``n`` counts the
    requests of that method so far.  ``drop = k`` leaves the k-th instance out of a whole-series WADO-RS
    answer.  ``stored`` counts the instances it forwarded to STOW-RS, ``gets`` the paths asked for."""

    def __init__(self, target: str):
        import requests

        scheme, _, rest = target.partition("://")
        host, _, root = rest.partition("/")
        self.target = f"{scheme}://{host}"  # + the request's path, which starts with the DICOMweb root
        self.rule, self.stored, self.counts, self.drop, self.gets = (lambda m, p, n: None), 0, {}, None, []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                n = proxy.counts[self.command] = proxy.counts.get(self.command, 0) + 1
                status = proxy.rule(self.command, self.path, n)
                if self.command == "GET":
                    proxy.gets.append(self.path)
                if status is not None:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.command == "POST":
                    proxy.stored += body.count(b"\r\nContent-Type: application/dicom\r\n")
                keep = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "content-type")}
                r = requests.request(self.command, proxy.target + self.path, headers=keep, data=body, timeout=30)
                content = r.content
                if proxy.drop is not None and re.search(r"/series/[\d.]+$", self.path) and r.ok:
                    boundary = re.search(r'boundary="?([^";]+)', r.headers["Content-Type"]).group(1).encode()
                    parts = content.split(b"--" + boundary)
                    content = (b"--" + boundary).join(parts[:1 + proxy.drop] + parts[2 + proxy.drop:])
                self.send_response(r.status_code)
                for k in ("Content-Type",):
                    if k in r.headers:
                        self.send_header(k, r.headers[k])
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{root}".rstrip("/")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(orthanc):
    p = _Proxy(orthanc[0])
    yield p
    p.close()


def test_partial_upload_names_what_did_not_land_and_a_rerun_sends_only_those(orthanc, sample_series, creds,
                                                                            proxy, tmp_path):
    folder, study, _ = sample_series
    env = {"MEDRECON_DICOMWEB_BATCH": "2", "MEDRECON_DICOMWEB_RETRIES": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    # the first batch lands; every later STOW-RS request is answered 503 (retried once, then given up)
    proxy.rule = lambda m, p, n: 503 if m == "POST" and n > 1 else None
    p = _cli("convert", folder, _web(proxy.url), env=env)
    line = _one_sentence(p, creds[1])
    uids = re.findall(r"\d+(?:\.\d+){5,}", line.split("missing SOP instance UIDs:")[1])
    assert "6 of 8 instances of the derived series" in line and f"of study {study}" in line
    assert "HTTP 503" in line and "2 are there" in line and len(uids) == 6
    series = re.search(r"series (\S+) of study", line).group(1)
    have = {i["00080018"]["Value"][0] for i in _client(*orthanc).search_for_instances(study, series)}
    assert len(have) == 2 and not have & set(uids)
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing half-written on the local side
    # rerun, server healthy: only the 6 missing instances are sent
    proxy.rule, proxy.stored = (lambda m, p, n: None), 0
    p = _cli("convert", folder, _web(proxy.url), env=env)
    assert p.returncode == 0, p.stderr
    assert proxy.stored == 6 and f"series={series}" in p.stdout
    assert len(_client(*orthanc).search_for_instances(study, series)) == 8


def test_rejected_upload_and_partial_retrieval(orthanc, sample_series, creds, proxy, tmp_path):
    folder, study, series = sample_series
    # a server that rejects every upload (as a read-only user would be): nothing lands, the message says so;
    # a NIfTI without a study of its own: study= in the URL puts the derived series into the original one
    import nibabel as nib

    import medrecon

    ref = medrecon.load_volume(folder)
    nifti = tmp_path / "plain.nii.gz"
    nib.save(nib.Nifti1Image(ref.data.transpose(2, 1, 0), ref.affine), nifti)
    proxy.rule = lambda m, p, n: 403 if m == "POST" else None
    p = _cli("convert", nifti, _web(proxy.url, f"study={study}"), env={"MEDRECON_DICOMWEB_BATCH": "4"})
    line = _one_sentence(p, creds[1])
    assert "8 of 8 instances" in line and "nothing of it is on the server" in line and "HTTP 403" in line
    assert f"of study {study}" in line and proxy.counts["POST"] == 1  # the first refusal stops the upload
    assert len(re.findall(r"\d+(?:\.\d+){5,}", line.split("missing SOP instance UIDs:")[1])) == 8
    # a series the server lists but returns only partly: the whole-series answer lacks its 3rd instance ...
    src = _web(proxy.url, f"study={study}&series={series}")
    proxy.drop = 2
    proxy.rule = lambda m, p, n: 404 if m == "GET" and "/instances/" in p else None  # ... and it is gone
    p = _cli("info", src)
    line = _one_sentence(p, creds[1])
    assert "listed 8 instances" in line and "returned only 7" in line
    assert len(re.findall(r"\d+(?:\.\d+){5,}", line.split("missing SOP instance UIDs:")[1])) == 1
    # ... but the instance alone can still be had: it is asked for on its own, and the read succeeds
    proxy.rule, proxy.gets = (lambda m, p, n: None), []
    p = _cli("info", src)
    assert p.returncode == 0 and "8 slices" in p.stdout, p.stderr
    assert len([g for g in proxy.gets if "/instances/" in g]) == 1
    # a transient 503 on the series retrieval is retried; a server that refuses series retrieval is asked
    # instance by instance
    proxy.drop = None
    for status, n_instances in ((503, 0), (400, 8)):
        proxy.counts.clear()
        proxy.gets = []
        seen: list[str] = []

        def rule(m, p, n, status=status, seen=seen):
            if m != "GET" or not re.search(r"/series/[\d.]+$", p):  # not the whole-series retrieval
                return None
            seen.append(p)
            return status if status == 400 or len(seen) == 1 else None  # 503: the first time only

        proxy.rule = rule
        p = _cli("info", src)
        assert p.returncode == 0 and "8 slices" in p.stdout, p.stderr
        assert len([g for g in proxy.gets if "/instances/" in g]) == n_instances
        assert len([g for g in proxy.gets if re.search(r"/series/[\d.]+$", g)]) == (2 if status == 503 else 1)
