#!/usr/bin/env bash
# A throw-away Orthanc with its DICOMweb plugin, for tests/test_dicomweb.py and benchmarks/dicomweb.py.
#
#   .ci/orthanc.sh install   apt-get install orthanc orthanc-dicomweb (Debian / Ubuntu, as root), if missing
#   .ci/orthanc.sh start     write a config into $MEDRECON_ORTHANC_DIR, start Orthanc on a free loopback port
#                            with authentication on (a generated user / password), wait until /system answers
#   .ci/orthanc.sh env       print the shell lines the tests read:
#                              MEDRECON_TEST_ORTHANC=http://127.0.0.1:PORT/dicom-web
#                              MEDRECON_TEST_ORTHANC_USER / MEDRECON_TEST_ORTHANC_PASSWORD
#                            (use: eval "$(.ci/orthanc.sh env)")
#   .ci/orthanc.sh stop      stop it and remove its folder (storage, config, credentials)
#
# MEDRECON_ORTHANC_DIR (default ${TMPDIR:-/tmp}/medrecon-orthanc-$UID) holds the config, the storage, the pid
# and the env file (mode 600: it holds the password).  MEDRECON_ORTHANC_PORT picks the port (default: a free one).
# The DICOM (C-STORE) port is off: only HTTP on the loopback interface (RemoteAccessAllowed false).
set -euo pipefail

DIR="${MEDRECON_ORTHANC_DIR:-${TMPDIR:-/tmp}/medrecon-orthanc-$(id -u)}"
BIN="${ORTHANC_BIN:-$(command -v Orthanc || echo /usr/sbin/Orthanc)}"

plugin_path() {
    local p
    for p in /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/lib/orthanc/libOrthancDicomWeb.so* \
             /usr/local/share/orthanc/plugins/libOrthancDicomWeb.so; do
        if [ -e "$p" ]; then echo "$p"; return 0; fi
    done
    return 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cmd_install() {
    if [ -x "$BIN" ] && plugin_path > /dev/null; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q > /dev/null
    apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb > /dev/null
    # the Debian package may start a system-wide service on port 8042: the tests do not use it
}

cmd_start() {
    [ -x "$BIN" ] || { echo "orthanc.sh: no Orthanc binary (run: .ci/orthanc.sh install)" >&2; exit 1; }
    local plugin
    plugin="$(plugin_path)" || { echo "orthanc.sh: no DICOMweb plugin (package orthanc-dicomweb)" >&2; exit 1; }
    if [ -f "$DIR/orthanc.pid" ] && kill -0 "$(cat "$DIR/orthanc.pid")" 2> /dev/null; then
        echo "orthanc.sh: already running (pid $(cat "$DIR/orthanc.pid"), $DIR)" >&2
        return 0
    fi
    mkdir -p "$DIR/db"
    chmod 700 "$DIR"
    local port user password
    port="${MEDRECON_ORTHANC_PORT:-$(free_port)}"
    user="medrecon"
    password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')"
    umask 077
    cat > "$DIR/orthanc.json" <<EOF
{
  "Name": "medrecon-test",
  "StorageDirectory": "$DIR/db",
  "IndexDirectory": "$DIR/db",
  "HttpPort": $port,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": true,
  "RegisteredUsers": {"$user": "$password"},
  "DicomServerEnabled": false,
  "DicomPort": 0,
  "OrthancExplorerEnabled": false,
  "WebDavEnabled": false,
  "StableAge": 1,
  "SaveJobs": false,
  "Plugins": ["$plugin"],
  "DicomWeb": {"Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Ssl": false,
               "Host": "127.0.0.1:$port"}
}
EOF
    cat > "$DIR/env" <<EOF
export MEDRECON_TEST_ORTHANC=http://127.0.0.1:$port/dicom-web
export MEDRECON_TEST_ORTHANC_USER=$user
export MEDRECON_TEST_ORTHANC_PASSWORD=$password
EOF
    "$BIN" "$DIR/orthanc.json" > "$DIR/orthanc.log" 2>&1 &
    echo $! > "$DIR/orthanc.pid"
    # wait until the REST API answers (with the credentials), at most 60 s
    local i
    for i in $(seq 1 120); do
        if ! kill -0 "$(cat "$DIR/orthanc.pid")" 2> /dev/null; then
            echo "orthanc.sh: Orthanc exited at start; its log:" >&2
            tail -20 "$DIR/orthanc.log" >&2
            exit 1
        fi
        if python3 - "$port" "$user" "$password" <<'EOF' 2> /dev/null; then
import base64, sys, urllib.request
port, user, password = sys.argv[1:4]
req = urllib.request.Request(f"http://127.0.0.1:{port}/system")
req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
urllib.request.urlopen(req, timeout=2).read()
EOF
            echo "orthanc.sh: Orthanc listening on http://127.0.0.1:$port (DICOMweb at /dicom-web, $DIR)" >&2
            return 0
        fi
        sleep 0.5
    done
    echo "orthanc.sh: Orthanc did not answer on port $port within 60 s; its log:" >&2
    tail -20 "$DIR/orthanc.log" >&2
    cmd_stop
    exit 1
}

cmd_env() {
    [ -f "$DIR/env" ] || { echo "orthanc.sh: not started ($DIR/env missing)" >&2; exit 1; }
    cat "$DIR/env"
}

cmd_stop() {
    if [ -f "$DIR/orthanc.pid" ]; then
        local pid i
        pid="$(cat "$DIR/orthanc.pid")"
        if kill -0 "$pid" 2> /dev/null; then
            kill "$pid" 2> /dev/null || true
            for i in $(seq 1 40); do
                kill -0 "$pid" 2> /dev/null || break
                sleep 0.25
            done
            kill -9 "$pid" 2> /dev/null || true
        fi
    fi
    rm -rf "$DIR"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    env) cmd_env ;;
    stop) cmd_stop ;;
    *) echo "usage: $0 install|start|env|stop" >&2; exit 64 ;;
esac
