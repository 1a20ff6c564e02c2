//! A role's key pair, kept in its data directory as `identity.p8` (PKCS#8, mode 0600).

use std::path::{Path, PathBuf};

use crate::core::identity::Identity;
use crate::sys::fs::read_or_create_secret;

/// The key file cannot be read, created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("key file {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key file {path}: {source}; move it away to start with a new identity")]
    Bad { path: PathBuf, source: crate::core::identity::BadKey },
}

/// Loads `dir/identity.p8`, or creates it on first start.
pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
    load_or_create_file(&dir.join("identity.p8"))
}

/// Loads the key file `path`, or creates it (mode 0600, its directory 0700 when new).
pub fn load_or_create_file(path: &Path) -> Result<Identity, IdentityError> {
    let pkcs8 = read_or_create_secret(path, || Ok(Identity::generate_pkcs8()))
        .map_err(|source| IdentityError::Io { path: path.to_owned(), source })?;
    Identity::from_pkcs8(&pkcs8).map_err(|source| IdentityError::Bad { path: path.to_owned(), source })
}

/// Loads the key file `path`, which must exist.
pub fn load_file(path: &Path) -> Result<Identity, IdentityError> {
    let pkcs8 = std::fs::read(path).map_err(|source| IdentityError::Io { path: path.to_owned(), source })?;
    Identity::from_pkcs8(&pkcs8).map_err(|source| IdentityError::Bad { path: path.to_owned(), source })
}

/// Creates the key file `path`; refuses to replace one.
pub fn create_file(path: &Path) -> Result<Identity, IdentityError> {
    if path.exists() {
        let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a key is already there; not replaced");
        return Err(IdentityError::Io { path: path.to_owned(), source });
    }
    load_or_create_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_persist() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), load_or_create(dir.path()).unwrap().public_key());
        std::fs::write(dir.path().join("identity.p8"), b"junk").unwrap();
        assert!(load_or_create(dir.path()).unwrap_err().to_string().contains("identity.p8"));
    }
}
