//! TLS for the client listeners (`--tls-cert`, `--tls-key`): the PEM files
//! read into a rustls server configuration, and that configuration made
//! ready for one shard.
//!
//! Only modern protocol: TLS 1.3 and 1.2 with the ring provider's suites
//! (ECDHE key exchange; AES-GCM or ChaCha20-Poly1305; no CBC, no RSA key
//! exchange, no SHA-1 MAC, no renegotiation). rustls offers nothing weaker,
//! so there is nothing to turn off.
//!
//! The configuration is immutable once built: a reload (SIGHUP) builds a
//! new one and hands it to every shard, which uses it for connections
//! accepted from then on; sessions already open keep theirs.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;

/// TLS 1.2 sessions each shard remembers for resumption (a returning
/// client skips the signature). Each shard has its own cache, so no lock is
/// shared between shards; a client that lands on another shard makes a
/// full handshake. ~300 bytes each: 4,096 is ~1.2 MB per shard.
pub const SESSION_CACHE_PER_SHARD: usize = 4096;

/// TLS 1.3 session tickets sent after a full handshake: none.
///
/// A ticket is data the server sends unasked right after the handshake,
/// just when a client sends its first request. Clients that read in one
/// thread and write in another on one OpenSSL socket (stomp.py; the
/// `websockets` sync client) then race inside OpenSSL (CPython issue
/// 77271): 20 of 600 stomp.py connects over TLS 1.3 failed with tickets
/// on, 0 of 600 with them off (`websockets`: 2 of 600, 0 of 600). And a
/// ticket resumes only on the shard that issued it, while a reconnect
/// lands on any shard, so on a machine of N cores it would save a
/// handshake one time in N. TLS 1.2 clients still resume by session id.
pub const TLS13_TICKETS: usize = 0;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert and --tls-key go together: set both, or neither for plain TCP")]
    Half,
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("no certificate in {path} (expected PEM `-----BEGIN CERTIFICATE-----` blocks)")]
    NoCert { path: String },
    #[error("cannot read the private key {path}: {reason} (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    Key { path: String, reason: String },
    #[error("the certificate {cert} and the key {key} cannot be used together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

/// The configuration for `--tls-cert`/`--tls-key`: `None` when both are
/// unset (plain TCP), an error when only one is set or the files are not
/// usable.
pub fn from_paths(cert: &Path, key: &Path) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => load(cert, key).map(Some),
        _ => Err(TlsError::Half),
    }
}

/// Read a PEM certificate chain (leaf first) and its private key.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = cert.display().to_string();
    let key_path = key.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert_path });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
            reason: e.to_string(),
        })?;
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

/// `config` with a session cache of the shard's own (see
/// [`SESSION_CACHE_PER_SHARD`]).
pub fn for_shard(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut own = config.clone();
    own.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_PER_SHARD);
    Arc::new(own)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stampede-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn neither_is_plain_and_one_alone_is_an_error() {
        let none = PathBuf::new();
        assert!(from_paths(&none, &none).unwrap().is_none());
        let cert = scratch("only.pem", "x");
        assert!(matches!(from_paths(&cert, &none), Err(TlsError::Half)));
        assert!(matches!(from_paths(&none, &cert), Err(TlsError::Half)));
    }

    #[test]
    fn unreadable_or_empty_files_name_the_file() {
        let missing = PathBuf::from("/nonexistent/stampede/cert.pem");
        let key = scratch("k.pem", "");
        let e = load(&missing, &key).unwrap_err();
        assert!(matches!(e, TlsError::Cert { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/stampede/cert.pem"));

        let empty = scratch("empty.pem", "not a pem file\n");
        let e = load(&empty, &key).unwrap_err();
        assert!(matches!(e, TlsError::NoCert { .. }), "{e}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        // A syntactically valid PEM certificate block whose body is not a
        // certificate: the key is missing first.
        let cert = scratch(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let key = scratch("nokey.pem", "nothing here\n");
        let e = load(&cert, &key).unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
    }
}
