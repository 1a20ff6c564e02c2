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
    let path = dir.join("identity.p8");
    let pkcs8 = read_or_create_secret(&path, || Ok(Identity::generate_pkcs8()))
        .map_err(|source| IdentityError::Io { path: path.clone(), source })?;
    Identity::from_pkcs8(&pkcs8).map_err(|source| IdentityError::Bad { path, source })
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
