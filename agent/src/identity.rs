//! The host's identity on disk: `<data_dir>/identity/{key.pem, cert.pem, ca.pem}`. The key is
//! made here and never leaves the host. The directory is 0700 and its files 0600; the agent
//! refuses to start when they are open to other local users (a build job running as another
//! user must not read the host's key), or when others may write to the data dir itself.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fifty_shared::config::{check_not_shared_writable, check_private_tree, create_private_dir, write_private};
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
        if d.exists() {
            check_not_shared_writable(data_dir).context("the agent's data dir")?;
            check_private_tree(&d).context("the host's identity")?;
        }
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
        create_private_dir(&d)?;
        // An identity dir left from an earlier join may be looser; this one holds the new key.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod 700 {}", d.display()))?;
        }
        write_private(&d.join("key.pem"), &self.cert.key_pem)?;
        write_private(&d.join("cert.pem"), &self.cert.cert_pem)?;
        write_private(&d.join("ca.pem"), &self.ca_pem)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_identity_is_owner_only_and_a_loose_one_is_refused_by_name() {
        let data = std::env::temp_dir().join(format!("fifty-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let identity =
            Identity { cert: CertAndKey { cert_pem: "cert".into(), key_pem: "key".into() }, ca_pem: "ca".into() };
        identity.save(&data).unwrap();
        let d = data.join("identity");
        assert_eq!(mode(&d), 0o700);
        for f in ["key.pem", "cert.pem", "ca.pem"] {
            assert_eq!(mode(&d.join(f)), 0o600, "{f}");
        }
        assert_eq!(Identity::load(&data).unwrap().cert.key_pem, "key");

        // The key made readable by others: the agent refuses to use it, naming the file and fix.
        std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Identity::load(&data).err().unwrap());
        assert!(err.contains(&format!("chmod 600 {}", d.join("key.pem").display())), "{err}");
        std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();

        // The identity dir opened up.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = format!("{:#}", Identity::load(&data).err().unwrap());
        assert!(err.contains(&format!("chmod 700 {}", d.display())), "{err}");
        // Saving again (a new join) closes it.
        identity.save(&data).unwrap();
        assert_eq!(mode(&d), 0o700);

        // A data dir others may write to: refused (0755 is fine: build jobs may need to enter it).
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = format!("{:#}", Identity::load(&data).err().unwrap());
        assert!(err.contains(&format!("chmod go-w {}", data.display())), "{err}");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        Identity::load(&data).unwrap();
        std::fs::remove_dir_all(&data).unwrap();
    }
}
