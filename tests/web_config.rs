#![allow(clippy::unwrap_used)]
//! `--web-config`: the sidecar over TLS (certificates made by `openssl`, requests by
//! `curl`, a scrape by Debian's Prometheus), basic auth from bcrypt hashes, response
//! headers, client certificates, files re-read without a restart, and bad files refused.

mod kit;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kit::prometheus::Prometheus;
use kit::Proc;

const LIMIT: Duration = Duration::from_secs(60);

/// An idle machine for the sidecar to serve.
const IDLE: &str = "initial_state: idle\nmetadata:\n  machine_name: idle\ntransitions:\n  - {from: idle, to: done, event: finish}\n";

fn sh(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir` (`NAME.crt`, `NAME.key`).
fn ca(dir: &Path, name: &str) {
    sh(
        "openssl CA",
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ])
            .args(["-days", "2", "-subj", &format!("/CN={name}")]),
    );
}

/// A certificate `NAME.crt`/`NAME.key` signed by CA `by`, for 127.0.0.1 (server) or a
/// client.
fn cert(dir: &Path, name: &str, by: &str, client: bool) {
    sh(
        "openssl key and request",
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])
            .args(["-subj", &format!("/CN={name}")]),
    );
    let ext = if client {
        "extendedKeyUsage=clientAuth\n"
    } else {
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    sh(
        "openssl sign",
        Command::new("openssl")
            .current_dir(dir)
            .args(["x509", "-req", "-in", &format!("{name}.csr")])
            .args([
                "-CA",
                &format!("{by}.crt"),
                "-CAkey",
                &format!("{by}.key"),
                "-CAcreateserial",
            ])
            .args(["-out", &format!("{name}.crt"), "-days", "2"])
            .args(["-extfile", &format!("{name}.ext")]),
    );
}

/// A bcrypt hash of `pw` by `turnstile hash-password` (cost 4: quick in debug builds).
fn hash(pw: &str) -> String {
    use std::io::Write as _;
    let mut child = kit::turnstile(&["hash-password", "--cost", "4"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "turnstile hash-password");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$2b$04$") && hash.len() == 60, "{hash}");
    hash
}

/// What curl got: the status (0 when no HTTP answer came), the headers (lower case) and
/// the body, or curl's error.
struct Got {
    status: u16,
    headers: String,
    body: String,
    error: String,
}

fn curl(args: &[&str], url: &str) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Got {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
        error: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

struct Sidecar {
    proc: Proc,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Sidecar {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> String {
        self.file("ca.crt").display().to_string()
    }
}

/// Certificates in a temp dir (CA `ca`, server `server`, client `client`), `web.yml` with
/// `web`, and `turnstile run` serving with it and `extra`.
fn start(web: &str, extra: &[&str]) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "ca");
    cert(dir.path(), "server", "ca", false);
    cert(dir.path(), "client", "ca", true);
    std::fs::write(dir.path().join("web.yml"), web).unwrap();
    std::fs::write(dir.path().join("idle.yaml"), IDLE).unwrap();
    let web_path = dir.path().join("web.yml").display().to_string();
    let cfg = dir.path().join("idle.yaml").display().to_string();
    let mut args = vec!["run", cfg.as_str(), "--web-config", web_path.as_str()];
    args.extend_from_slice(extra);
    let mut proc = Proc::start(&args);
    let addr = proc.sidecar_addr(LIMIT);
    Sidecar { proc, addr, dir }
}

fn tls_and_users(users: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         basic_auth_users:\n{users}\
         http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n"
    )
}

#[test]
fn tls_basic_auth_and_headers_guard_the_sidecar_and_prometheus_scrapes_through_them() {
    let mut s = start(
        &tls_and_users(&format!("  prom: '{}'\n", hash("pw"))),
        &["--token", "write-secret"],
    );
    let ca = s.ca();
    let tls: &[&str] = &["--cacert", &ca];

    // Reads need credentials; the answer says how, in the API's JSON error shape.
    let g = curl(tls, &s.url("/metrics"));
    assert_eq!(g.status, 401, "{}", g.error);
    assert!(
        g.headers
            .contains("www-authenticate: basic realm=\"turnstile\""),
        "{}",
        g.headers
    );
    assert!(g.body.contains("\"status\":401"), "{}", g.body);
    let g = curl(&[tls, &["-u", "prom:wrong"]].concat(), &s.url("/metrics"));
    assert_eq!(g.status, 401);
    assert!(g.body.contains("wrong user name or password"), "{}", g.body);
    let g = curl(&[tls, &["-u", "nobody:pw"]].concat(), &s.url("/stats"));
    assert_eq!(g.status, 401);
    let g = curl(&[tls, &["-u", "prom:pw"]].concat(), &s.url("/metrics"));
    assert_eq!(g.status, 200, "{}", g.error);
    assert!(g.body.contains("turnstile_"), "{}", g.body);
    assert!(
        g.headers
            .contains("strict-transport-security: max-age=31536000"),
        "{}",
        g.headers
    );
    // Probes stay open; the headers apply to them too.
    for probe in [
        "/healthz",
        "/readyz",
        "/-/healthy",
        "/-/ready",
        "/healthz/machines?stale_after=1h",
    ] {
        let g = curl(tls, &s.url(probe));
        assert_eq!(g.status, 200, "{probe}: {}", g.body);
        assert!(
            g.headers.contains("strict-transport-security"),
            "{}",
            g.headers
        );
    }
    // Writes need the bearer token (basic credentials are not enough when one is set).
    let event = [
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        "{\"type\":\"nothing\"}",
    ];
    let g = curl(
        &[tls, &event, &["-u", "prom:pw"]].concat(),
        &s.url("/machines/idle/events"),
    );
    assert_eq!(g.status, 401, "{}", g.body);
    let g = curl(
        &[tls, &event, &["-H", "authorization: Bearer write-secret"]].concat(),
        &s.url("/machines/idle/events"),
    );
    assert_eq!(g.status, 202, "{}", g.body);
    // Plain HTTP on the TLS port gets no answer; a client that does not trust the CA
    // refuses the server.
    let g = curl(&[], &format!("http://{}/healthz", s.addr));
    assert_eq!(g.status, 0, "{}", g.headers);
    let g = curl(&[], &s.url("/healthz"));
    assert_eq!(g.status, 0);
    assert!(
        g.error.to_lowercase().contains("certificate"),
        "{}",
        g.error
    );

    // Python's ssl module negotiates TLS 1.2 and TLS 1.3 with the test CA and reads an
    // answer over each.
    for version in ["TLSv1_2", "TLSv1_3"] {
        let script = format!(
            "import ssl, socket, base64\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.{version}\n\
             s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', {port})), server_hostname='localhost')\n\
             auth = base64.b64encode(b'prom:pw').decode()\n\
             s.sendall(('GET /stats HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Basic ' + auth + '\\r\\nConnection: close\\r\\n\\r\\n').encode())\n\
             data = b''\n\
             while True:\n\
             \x20   chunk = s.recv(65536)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print(s.version(), data.split(b'\\r\\n')[0].decode())\n",
            port = s.addr.port()
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = version.replace('_', ".");
        assert_eq!(
            said.trim(),
            format!("{expected} HTTP/1.1 200 OK"),
            "{version}"
        );
    }

    // Prometheus scrapes over TLS with basic auth.
    let prom = Prometheus::start_with(
        s.addr,
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prom\n      password: pw\n"
        ),
    );
    kit::wait_until("prometheus scrapes the TLS sidecar", LIMIT, || {
        prom.scalar("up{job=\"turnstile\"}") == Some(1.0)
    });
    let samples = prom
        .scalar("scrape_samples_scraped{job=\"turnstile\"}")
        .unwrap();
    assert!(samples > 10.0, "{samples} samples scraped");

    s.proc.signal("TERM");
    let (st, _) = s.proc.finish(LIMIT);
    assert!(st.success(), "{}", s.proc.log());
}

#[test]
fn certificates_and_users_change_without_a_restart_and_a_broken_file_keeps_the_last_good_one() {
    let mut s = start(&tls_and_users(&format!("  al: '{}'\n", hash("pw"))), &[]);
    let ca1 = s.ca();
    let tls: &[&str] = &["--cacert", &ca1];
    assert_eq!(
        curl(&[tls, &["-u", "al:pw"]].concat(), &s.url("/stats")).status,
        200
    );

    // A new CA and server certificate in place of the files: new connections use them.
    ca(s.dir.path(), "ca2");
    cert(s.dir.path(), "server2", "ca2", false);
    std::fs::copy(s.file("server2.key"), s.file("server.key.new")).unwrap();
    std::fs::copy(s.file("server2.crt"), s.file("server.crt.new")).unwrap();
    std::fs::rename(s.file("server.key.new"), s.file("server.key")).unwrap();
    std::fs::rename(s.file("server.crt.new"), s.file("server.crt")).unwrap();
    let ca2 = s.file("ca2.crt").display().to_string();
    kit::wait_until("the new certificate is served", LIMIT, || {
        curl(&["--cacert", &ca2, "-u", "al:pw"], &s.url("/stats")).status == 200
    });
    assert_eq!(
        curl(&[tls, &["-u", "al:pw"]].concat(), &s.url("/stats")).status,
        0
    );
    let tls: &[&str] = &["--cacert", &ca2];

    // A new password: the old one is refused from the next request on.
    let web = s.file("web.yml");
    std::fs::write(&web, tls_and_users(&format!("  al: '{}'\n", hash("pw2")))).unwrap();
    kit::wait_until("the new password works", LIMIT, || {
        curl(&[tls, &["-u", "al:pw2"]].concat(), &s.url("/stats")).status == 200
    });
    assert_eq!(
        curl(&[tls, &["-u", "al:pw"]].concat(), &s.url("/stats")).status,
        401
    );

    // A broken file: the last good settings stay, and the error is logged (at the next
    // connection, which reads the changed file).
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
    )
    .unwrap();
    assert_eq!(
        curl(&[tls, &["-u", "al:pw2"]].concat(), &s.url("/stats")).status,
        200
    );
    s.proc.wait_for("the refused web config", LIMIT, |j| {
        kit::field(j, "message").starts_with("web config refused, the last good one stays")
    });
    assert_eq!(
        curl(&[tls, &["-u", "al:pw2"]].concat(), &s.url("/stats")).status,
        200
    );
    assert_eq!(
        curl(&[tls, &["-u", "al:pw"]].concat(), &s.url("/stats")).status,
        401
    );

    s.proc.signal("TERM");
    let (st, _) = s.proc.finish(LIMIT);
    assert!(st.success(), "{}", s.proc.log());
}

#[test]
fn client_certificates_are_required_and_health_can_be_closed() {
    let web = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n";
    let mut s = start(
        &format!("{web}basic_auth_users:\n  al: '{}'\n", hash("pw")),
        &["--health-needs-auth"],
    );
    let ca = s.ca();
    let (crt, key) = (
        s.file("client.crt").display().to_string(),
        s.file("client.key").display().to_string(),
    );
    let g = curl(&["--cacert", &ca], &s.url("/healthz"));
    assert_eq!(g.status, 0, "no client certificate: no answer");
    let with_cert = [
        "--cacert",
        ca.as_str(),
        "--cert",
        crt.as_str(),
        "--key",
        key.as_str(),
    ];
    for probe in ["/healthz", "/healthz/machines"] {
        assert_eq!(
            curl(&with_cert, &s.url(probe)).status,
            401,
            "--health-needs-auth: {probe}"
        );
    }
    assert_eq!(
        curl(
            &[&with_cert[..], &["-u", "al:pw"]].concat(),
            &s.url("/healthz")
        )
        .status,
        200
    );
    // TLS 1.2 is below min_version.
    let g = curl(
        &[&with_cert[..], &["--tls-max", "1.2"]].concat(),
        &s.url("/healthz"),
    );
    assert_eq!(g.status, 0);

    s.proc.signal("TERM");
    let (st, _) = s.proc.finish(LIMIT);
    assert!(st.success(), "{}", s.proc.log());
}

#[test]
fn bad_web_configs_exit_2_with_what_and_where() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path(), "ca");
    cert(dir.path(), "server", "ca", false);
    std::fs::write(dir.path().join("idle.yaml"), IDLE).unwrap();
    let cfg = dir.path().join("idle.yaml").display().to_string();
    let cases = [
        ("basic_auth_users:\n  al: plain-text\n", "basic_auth_users: al: not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suite: []\n", ":4:3: unknown field `cipher_suite`"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS11\n", "rustls implements TLS 1.2 and 1.3 only"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n", "not supported by rustls"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n", "needs `client_ca_file`"),
        ("tls_server_config:\n  cert_file: nothere.crt\n  key_file: server.key\n", "nothere.crt"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n", "no private key"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", "not one rustls implements"),
        ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "`Set-Cookie` cannot be set here"),
    ];
    for (web, expected) in cases {
        let path = dir.path().join("web.yml");
        std::fs::write(&path, web).unwrap();
        let out = kit::turnstile(&["run", &cfg, "--web-config", &path.display().to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{web}: {err}");
        assert!(
            err.contains("--web-config") && err.contains(expected),
            "{web}: expected {expected:?} in {err}"
        );
    }
}
