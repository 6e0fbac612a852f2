//! `tls_server_config` → a rustls server configuration (ring as the crypto provider; no
//! OpenSSL).
//!
//! What rustls can and cannot do, against exporter-toolkit's keys:
//! - versions: TLS 1.2 and 1.3 (`min_version`/`max_version` `TLS12`, `TLS13`); `TLS10` and
//!   `TLS11` are refused, rustls does not implement them.
//! - `cipher_suites` (Go's names) select among the TLS 1.2 suites rustls implements, the
//!   ECDHE ones with AES-GCM or ChaCha20-Poly1305; TLS 1.3's suites are not configurable
//!   (as in Go). Names of suites rustls lacks (CBC, RSA key exchange, 3DES) are refused.
//! - `curve_preferences`: `X25519`, `CurveP256`, `CurveP384` (`CurveP521` is refused).
//! - `client_auth_type`: `NoClientCert`, `VerifyClientCertIfGiven`,
//!   `RequireAndVerifyClientCert` (both need `client_ca_file` or `client_ca`).
//!   `RequestClientCert` and `RequireAnyClientCert` ask for a certificate without checking
//!   it, which rustls's verifiers do not offer: refused. `client_allowed_sans` is refused.
//! - `prefer_server_cipher_suites`: the server's order when true (the default).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion};

/// Encrypted bytes a connection may have waiting for the socket before a write waits.
///
/// rustls's default, 64 KiB, split the 1.6 MB `/metrics` page of 50 machines × 20 states
/// into some 26 rounds of encrypting 64 KiB, one `writev` and often a wait for the socket;
/// at 1 MiB the same page takes two rounds, and the server's CPU per scrape over TLS fell
/// by 2–9 % in four runs (BENCHMARKS.md, "The sidecar over TLS with basic auth"). It stays bounded
/// so that a client that pipelines requests and reads nothing still stops the writes (and
/// hyper's next answer) here: a connection holds at most this much besides its answer.
pub const SEND_BUFFER: usize = 1 << 20;

/// Settings of an accepted TLS connection: the send buffer of [`SEND_BUFFER`].
pub fn tune_connection(conn: &mut ServerConnection) {
    conn.set_buffer_limit(Some(SEND_BUFFER));
}

use serde::Deserialize;

/// `tls_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<String>,
    pub client_ca: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Option<Vec<String>>,
}

/// Go's names of the TLS 1.2 suites rustls implements (with and without `_SHA256` for
/// ChaCha20, as Go accepts both).
const SUITES: [(&str, rustls::SupportedCipherSuite); 8] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        ring::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Builds the server configuration; `files` gets the certificate files read.
pub(super) fn build(
    raw: &RawTls,
    base: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Arc<ServerConfig>, String> {
    let certs = pem_certs(
        "cert",
        raw.cert_file.as_deref(),
        raw.cert.as_deref(),
        base,
        files,
    )?
    .ok_or("`cert_file` (or `cert`) is required")?;
    let key_pem = pem_text(
        "key",
        raw.key_file.as_deref(),
        raw.key.as_deref(),
        base,
        files,
    )?
    .ok_or("`key_file` (or `key`) is required")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("key: no private key in it ({e})"))?;
    let provider = Arc::new(provider(raw)?);
    let versions = versions(raw)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("versions and cipher suites do not fit together: {e}"))?;
    if raw
        .client_allowed_sans
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(
            "`client_allowed_sans` is not supported (the client CA decides who may connect)".into(),
        );
    }
    let ca = pem_certs(
        "client_ca",
        raw.client_ca_file.as_deref(),
        raw.client_ca.as_deref(),
        base,
        files,
    )?;
    let auth = raw.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let roots = |ca: Option<Vec<CertificateDer<'static>>>| -> Result<Arc<RootCertStore>, String> {
        let ca = ca.ok_or_else(|| format!("client_auth_type {auth} needs `client_ca_file`"))?;
        let mut store = RootCertStore::empty();
        for c in ca {
            store
                .add(c)
                .map_err(|e| format!("client_ca: not a usable CA certificate: {e}"))?;
        }
        Ok(Arc::new(store))
    };
    let builder = match auth {
        "NoClientCert" | "" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
            let verifier = if auth == "VerifyClientCertIfGiven" {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("client_ca: {e}"))?,
            )
        }
        "RequestClientCert" | "RequireAnyClientCert" => {
            return Err(format!(
                "client_auth_type {auth} (a client certificate without verification) is not supported by rustls; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
            ))
        }
        other => {
            return Err(format!(
                "unknown client_auth_type `{other}` (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ))
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a server identity: {e}"))?;
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// ring's provider, with the TLS 1.2 suites and the groups the file names.
fn provider(raw: &RawTls) -> Result<CryptoProvider, String> {
    let mut p = ring::default_provider();
    if let Some(names) = &raw.cipher_suites {
        let mut chosen = Vec::new();
        for name in names {
            let Some((_, suite)) = SUITES.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "cipher suite `{name}` is not one rustls implements (TLS 1.2: {})",
                    known.join(", ")
                ));
            };
            chosen.push(*suite);
        }
        // TLS 1.3 suites stay, first; then the chosen TLS 1.2 ones in the file's order.
        let mut suites: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        suites.extend(chosen);
        p.cipher_suites = suites;
    }
    if let Some(curves) = &raw.curve_preferences {
        let mut groups = Vec::new();
        for c in curves {
            let g = match c.as_str() {
                "X25519" => ring::kx_group::X25519,
                "CurveP256" => ring::kx_group::SECP256R1,
                "CurveP384" => ring::kx_group::SECP384R1,
                other => {
                    return Err(format!(
                        "curve `{other}` is not supported (X25519, CurveP256, CurveP384)"
                    ))
                }
            };
            groups.push(g);
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

/// The versions between `min_version` (default TLS 1.2) and `max_version` (default 1.3).
fn versions(raw: &RawTls) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let rank = |v: Option<&str>, default: u8, key: &str| -> Result<u8, String> {
        match v {
            None => Ok(default),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(old @ ("TLS10" | "TLS11")) => Err(format!(
                "{key} {old}: rustls implements TLS 1.2 and 1.3 only (TLS12, TLS13)"
            )),
            Some(other) => Err(format!("{key}: unknown version `{other}` (TLS12, TLS13)")),
        }
    };
    let min = rank(raw.min_version.as_deref(), 12, "min_version")?;
    let max = rank(raw.max_version.as_deref(), 13, "max_version")?;
    let v: Vec<_> = [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(n, _)| (min..=max).contains(n))
        .map(|(_, v)| v)
        .collect();
    if v.is_empty() {
        return Err("min_version is above max_version".into());
    }
    Ok(v)
}

/// The PEM text of a `*_file` (relative to the web config's folder) or of the inline key.
fn pem_text(
    what: &str,
    file: Option<&str>,
    inline: Option<&str>,
    base: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Option<Vec<u8>>, String> {
    match (file, inline) {
        (Some(_), Some(_)) => Err(format!("give `{what}_file` or `{what}`, not both")),
        (Some(f), None) => {
            let path = base.join(f);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("{what}_file {}: {e}", path.display()))?;
            files.push(path);
            Ok(Some(bytes))
        }
        (None, Some(text)) => Ok(Some(text.as_bytes().to_vec())),
        (None, None) => Ok(None),
    }
}

/// The certificates of a PEM file or inline text (at least one).
fn pem_certs(
    what: &str,
    file: Option<&str>,
    inline: Option<&str>,
    base: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
    let Some(pem) = pem_text(what, file, inline, base, files)? else {
        return Ok(None);
    };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: not PEM certificates ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in it"));
    }
    Ok(Some(certs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(f: impl FnOnce(&mut RawTls)) -> RawTls {
        let mut r = RawTls::default();
        f(&mut r);
        r
    }

    #[test]
    fn what_rustls_cannot_do_is_refused_by_name() {
        let e = versions(&raw(|r| r.min_version = Some("TLS11".into()))).unwrap_err();
        assert!(e.contains("rustls implements TLS 1.2 and 1.3 only"), "{e}");
        assert_eq!(
            versions(&raw(|r| r.min_version = Some("TLS13".into())))
                .unwrap()
                .len(),
            1
        );
        let e = versions(&raw(|r| {
            r.min_version = Some("TLS13".into());
            r.max_version = Some("TLS12".into());
        }))
        .unwrap_err();
        assert!(e.contains("above"), "{e}");
        let e = provider(&raw(|r| {
            r.cipher_suites = Some(vec!["TLS_RSA_WITH_AES_128_CBC_SHA".into()])
        }))
        .unwrap_err();
        assert!(e.contains("not one rustls implements"), "{e}");
        let p = provider(&raw(|r| {
            r.cipher_suites = Some(vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()])
        }))
        .unwrap();
        let tls12 = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12);
        assert_eq!(tls12.count(), 1);
        let e = provider(&raw(|r| {
            r.curve_preferences = Some(vec!["CurveP521".into()])
        }))
        .unwrap_err();
        assert!(e.contains("CurveP521"), "{e}");
    }
}
