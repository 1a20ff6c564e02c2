//! TLS with rustls and its ring provider. Servers (coordinator, nodes) serve HTTPS when given
//! a certificate chain and key in PEM files; every client of this process (the CLI, a
//! coordinator dialling nodes, a node dialling its coordinator) accepts `https://` URLs and
//! verifies certificates against the system's roots plus any CA file the configuration names
//! (`[tls] ca_file`). Plain `http://` keeps working, for one-machine networks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}")]
    Read { what: &'static str, path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the certificate in {cert} and the key in {key} do not make a TLS server")]
    Server { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("a CA certificate in {path} is not usable")]
    BadCa { path: PathBuf, source: rustls::Error },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read { what: "certificate", path: cert.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        what: "private key",
        path: key.to_owned(),
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|source| TlsError::Server { cert: cert.to_owned(), key: key.to_owned(), source })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration when both a certificate and a key are given, else plain HTTP.
pub fn server_config_from(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => server_config(c, k).map(Some),
        _ => Ok(None),
    }
}

/// CA certificates this process trusts besides the system's roots.
static EXTRA_ROOTS: Mutex<Vec<CertificateDer<'static>>> = Mutex::new(Vec::new());

/// Trusts the CA certificates in the PEM file `path`, for every client made afterwards.
pub fn trust_ca_file(path: &Path) -> Result<(), TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read { what: "CA certificate", path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    let mut check = RootCertStore::empty();
    for c in &certs {
        check.add(c.clone()).map_err(|source| TlsError::BadCa { path: path.to_owned(), source })?;
    }
    let mut extra = EXTRA_ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    for c in certs {
        if !extra.contains(&c) {
            extra.push(c);
        }
    }
    Ok(())
}

/// The system's root certificates, read once (none when the system has no store).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The TLS configuration for a new client: system roots plus the trusted CA files. Built
/// once per set of trusted CAs (parsing the system's roots costs milliseconds, and clients
/// are made per audit).
pub fn client_config() -> Arc<ClientConfig> {
    static CACHE: Mutex<Option<(usize, Arc<ClientConfig>)>> = Mutex::new(None);
    let extra = EXTRA_ROOTS.lock().unwrap_or_else(|e| e.into_inner()).len();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match &*cache {
        Some((n, c)) if *n == extra => c.clone(),
        _ => {
            let c = build_client_config();
            *cache = Some((extra, c.clone()));
            c
        }
    }
}

fn build_client_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    for c in EXTRA_ROOTS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = roots.add(c.clone());
    }
    // ALPN is left to the connector (hyper-rustls sets http/1.1).
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The PEM files of a private CA and of a server certificate it signed.
pub struct LocalCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a private CA and a certificate it signed for 127.0.0.1 and localhost, in `dir`
/// (`ca.pem`, `cert.pem`, `key.pem`; the key 0600): HTTPS for a network on one machine
/// (`devnet --tls`, benchmarks, tests). Files already there are reused.
pub fn local_ca(dir: &Path) -> std::io::Result<LocalCa> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let files = LocalCa { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let err = |e: rcgen::Error| std::io::Error::other(e.to_string());
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "p2pstore local CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).map_err(err)?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    crate::sys::fs::create_private_dir(dir)?;
    crate::sys::fs::write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.ca, ca_cert.pem())?;
    Ok(files)
}
