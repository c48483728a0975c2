//! TLS termination with rustls (ring provider): a certificate chain and key
//! from PEM files, or a development certificate made on request (a local CA
//! and a leaf for localhost / 127.0.0.1 / ::1, written so clients can trust
//! the CA with `--cacert`). HTTP/2 and HTTP/1.1 are offered by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// A server config from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("not a readable PEM file: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, format!("a certificate does not parse: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no CERTIFICATE block in it"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, format!("no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("the certificate and the key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The same config for the gRPC port, which speaks HTTP/2 only: it offers
/// `h2` alone, so a client that speaks HTTP/1.1 only is told so in the
/// handshake (a `no_application_protocol` alert), not dropped after it.
pub fn grpc_config(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut grpc = config.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(grpc)
}

/// Paths of a development certificate.
pub struct DevCert {
    /// What clients trust (`curl --cacert`, `requests.post(verify=...)`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes (once) a development CA and a leaf certificate for localhost,
/// 127.0.0.1 and ::1 under `dir`; reuses them if present. Not for
/// production: the CA key is on disk beside it.
pub fn dev_cert(dir: &Path) -> Result<DevCert, TlsError> {
    let paths = DevCert {
        ca: dir.join("dev-ca.pem"),
        cert: dir.join("dev-cert.pem"),
        key: dir.join("dev-key.pem"),
    };
    if paths.ca.is_file() && paths.cert.is_file() && paths.key.is_file() {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let gen = |e: rcgen::Error| TlsError::Config(format!("making the development certificate: {e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wasmscore development CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate().map_err(gen)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(gen)?;
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()]).map_err(gen)?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate().map_err(gen)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(gen)?;
    let write = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| file_err(p, e));
    write(&paths.ca, ca.pem())?;
    // The chain: leaf, then the CA.
    write(&paths.cert, format!("{}{}", leaf.pem(), ca.pem()))?;
    write(&paths.key, leaf_key.serialize_pem())?;
    restrict(&paths.key);
    Ok(paths)
}

#[cfg(unix)]
fn restrict(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_certificate_loads_and_bad_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dev_cert(dir.path()).unwrap();
        let cfg = server_config(&dev.cert, &dev.key).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(grpc_config(&cfg).alpn_protocols, vec![b"h2".to_vec()]);
        // Reused, not remade.
        let before = std::fs::read(&dev.ca).unwrap();
        dev_cert(dir.path()).unwrap();
        assert_eq!(before, std::fs::read(&dev.ca).unwrap());
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = server_config(&junk, &dev.key).unwrap_err().to_string();
        assert!(e.contains("junk.pem"), "{e}");
        let e = server_config(&dev.cert, &junk).unwrap_err().to_string();
        assert!(e.contains("junk.pem") && e.contains("private key"), "{e}");
        // A key that is not the certificate's.
        let other = dev_cert(&dir.path().join("other")).unwrap();
        let e = server_config(&dev.cert, &other.key).unwrap_err().to_string();
        assert!(e.contains("do not go together"), "{e}");
    }
}
