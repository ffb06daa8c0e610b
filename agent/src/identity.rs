//! The host's identity on disk: `<data_dir>/identity/{key.pem, cert.pem, ca.pem}`. The key is
//! made here and never leaves the host; the files are written owner-only.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fifty_shared::config::write_private;
use fifty_shared::tls::CertAndKey;

/// The host's key, certificate and the cluster CA.
pub struct Identity {
    /// Key and certificate.
    pub cert: CertAndKey,
    /// Cluster CA, PEM.
    pub ca_pem: String,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

impl Identity {
    /// Loads the identity `fifty-agent join` left in `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self> {
        let d = dir(data_dir);
        let read = |name: &str| {
            std::fs::read_to_string(d.join(name)).with_context(|| {
                format!("read {} (has this host joined? run `fifty-agent join` first)", d.join(name).display())
            })
        };
        Ok(Self {
            cert: CertAndKey { cert_pem: read("cert.pem")?, key_pem: read("key.pem")? },
            ca_pem: read("ca.pem")?,
        })
    }

    /// Writes the identity into `data_dir`, replacing any earlier one.
    pub fn save(&self, data_dir: &Path) -> Result<()> {
        let d = dir(data_dir);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        // Owner-only, so a CI job running as another user cannot even list it.
        std::fs::set_permissions(&d, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700))
            .with_context(|| format!("make {} owner-only", d.display()))?;
        write_private(&d.join("key.pem"), &self.cert.key_pem)?;
        write_private(&d.join("cert.pem"), &self.cert.cert_pem)?;
        write_private(&d.join("ca.pem"), &self.ca_pem)?;
        Ok(())
    }
}
