//! Enrolment: `fedssl-coordinator provision` writes a certificate authority, the
//! coordinator's certificate and one startup kit per site (NVIDIA FLARE's "startup kits"),
//! all signed by that CA, so that `serve --kit` admits exactly the enrolled sites (mutual TLS).
//!
//! Layout of `--out DIR`:
//! - `ca/ca.pem`, `ca/ca-key.pem` — the CA; its key stays with whoever provisions, never in
//!   a kit;
//! - `coordinator/{ca.pem,cert.pem,key.pem}` — for `serve --kit DIR/coordinator`;
//! - `<site>/{ca.pem,cert.pem,key.pem,client.toml}` — for `fedssl-client --kit DIR/<site>`;
//!   `client.toml` names the coordinator (`coordinator = "HOST:PORT"`, `server_name`) and
//!   the site.
//!
//! A site's certificate carries its name as the subject's common name and as its one DNS
//! subject-alternative name (what the coordinator reads as the site's identity), the
//! client-authentication key usage, a random 128-bit serial, and a validity of `--days`.
//! Keys are ECDSA P-256 (rcgen with ring), written 0600 on Unix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// Name of a kit's client configuration file.
pub const CLIENT_CONFIG: &str = "client.toml";

/// What `provision` is asked for.
#[derive(Clone, Debug)]
pub struct ProvisionRequest {
    /// Site names: lower-case DNS labels (`a-z`, `0-9`, `-`, at most 63 characters).
    pub sites: Vec<String>,
    /// Host names or IP addresses the coordinator's certificate is valid for (the first is
    /// what clients connect to).
    pub coordinator_names: Vec<String>,
    /// UDP port written into the sites' `client.toml`.
    pub port: u16,
    /// Days the certificates stay valid (from now; one day of slack before now for clocks).
    pub days: i64,
}

/// A kit's `client.toml`: where the coordinator is and who this site is (read by
/// `fedssl-client --kit`, `client/src/kit.rs`; the tests crate checks that they agree).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KitClientConfig {
    /// `HOST:PORT` of the coordinator (UDP).
    pub coordinator: String,
    /// Name the coordinator's certificate is valid for.
    pub server_name: String,
    /// This site's name (its certificate's identity).
    pub site: String,
}

/// An issued certificate with its key, as PEM text.
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its PKCS#8 private key (PEM).
    pub key_pem: String,
}

/// A certificate authority that can issue certificates.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    /// A fresh self-signed CA named `fedssl CA <label> <random hex>`, valid for `days`: two
    /// provisionings never share a CA name, so a certificate of the one is told apart from
    /// the other's by its issuer.
    pub fn new(label: &str, days: i64) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let tag: u32 = rand::random();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fedssl CA {label} {tag:08x}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, days);
        let key = KeyPair::generate().context("cannot generate the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("cannot sign the CA certificate")?;
        Ok(Self { cert, key })
    }

    /// The CA certificate (PEM): what both sides trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for site `name` (client authentication), valid for `days` from now;
    /// negative `days` issue an already expired certificate (tests).
    pub fn issue_site(&self, name: &str, days: i64) -> Result<Issued> {
        check_site_name(name)?;
        self.issue(
            vec![name.to_string()],
            name,
            ExtendedKeyUsagePurpose::ClientAuth,
            days,
        )
    }

    /// The coordinator's certificate (server authentication) for `names`.
    pub fn issue_coordinator(&self, names: &[String], days: i64) -> Result<Issued> {
        let first = names
            .first()
            .context("--coordinator-name: at least one host name or IP address")?;
        self.issue(
            names.to_vec(),
            first,
            ExtendedKeyUsagePurpose::ServerAuth,
            days,
        )
    }

    fn issue(
        &self,
        sans: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        days: i64,
    ) -> Result<Issued> {
        let mut params = CertificateParams::new(sans).context("bad subject alternative name")?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        let mut serial: [u8; 16] = rand::random();
        serial[0] &= 0x7f; // a positive integer
        serial[0] |= 0x01; // of full length (no leading zero byte)
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let key = KeyPair::generate().context("cannot generate a key")?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("cannot sign the certificate of `{cn}`"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Validity from one day before now to `days` after now (before now when `days < 0`).
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    if days < 0 {
        params.not_before = now - time::Duration::days(1 - days);
    }
}

use fedssl_shared::config::check_site_name;

/// Writes the CA, the coordinator's kit and one kit per site into `out`; returns the kits'
/// folders (coordinator first). Refuses a folder that already holds a CA (re-provisioning
/// would make every kit handed out so far useless) and duplicate or bad site names, before
/// writing anything.
pub fn provision(req: &ProvisionRequest, out: &Path) -> Result<Vec<PathBuf>> {
    if req.sites.is_empty() {
        bail!("--sites: name at least one site");
    }
    for (i, s) in req.sites.iter().enumerate() {
        check_site_name(s).context("in --sites")?;
        if req.sites[..i].contains(s) {
            bail!("--sites: `{s}` is named twice");
        }
    }
    if req.coordinator_names.is_empty() {
        bail!("--coordinator-name: at least one host name or IP address");
    }
    for n in &req.coordinator_names {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            let shown: String = n.chars().take(64).collect();
            bail!(
                "--coordinator-name `{}`: not a host name or IP address (the sites check the coordinator's certificate against it)",
                shown.escape_default()
            );
        }
    }
    if out.join("ca").join("ca.pem").exists() {
        bail!(
            "{} already holds a CA (ca/ca.pem): provisioning again would replace it and invalidate every kit handed out; use another --out",
            out.display()
        );
    }
    let ca = Authority::new(&req.coordinator_names.join(","), req.days)?;
    let ca_pem = ca.cert_pem();
    write_file(&out.join("ca").join("ca.pem"), &ca_pem, false)?;
    write_file(&out.join("ca").join("ca-key.pem"), &ca.key_pem(), true)?;
    let coord = ca.issue_coordinator(&req.coordinator_names, req.days)?;
    let coord_dir = out.join("coordinator");
    write_kit(&coord_dir, &ca_pem, &coord)?;
    let mut dirs = vec![coord_dir];
    let server_name = &req.coordinator_names[0];
    let host = if server_name.contains(':') {
        format!("[{server_name}]")
    } else {
        server_name.clone()
    };
    for site in &req.sites {
        let dir = out.join(site);
        write_kit(&dir, &ca_pem, &ca.issue_site(site, req.days)?)?;
        let cfg = KitClientConfig {
            coordinator: format!("{host}:{}", req.port),
            server_name: server_name.clone(),
            site: site.clone(),
        };
        write_file(&dir.join(CLIENT_CONFIG), &toml::to_string(&cfg)?, false)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` (0600) into `dir`.
fn write_kit(dir: &Path, ca_pem: &str, issued: &Issued) -> Result<()> {
    write_file(&dir.join("ca.pem"), ca_pem, false)?;
    write_file(&dir.join("cert.pem"), &issued.cert_pem, false)?;
    write_file(&dir.join("key.pem"), &issued.key_pem, true)
}

/// Writes `text` to `path` (its folder created); a `secret` is created readable by its owner
/// only (0600) on Unix, before any byte is written.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_name_that_is_no_host_name_or_address_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["not a host!", "", "a..b", "host:4433"] {
            let req = ProvisionRequest {
                sites: vec!["site-a".into()],
                coordinator_names: vec!["coord.example".into(), bad.into()],
                port: 4433,
                days: 30,
            };
            let e = format!("{:#}", provision(&req, dir.path()).unwrap_err());
            assert!(
                e.contains("--coordinator-name") && e.contains("not a host name"),
                "{bad}: {e}"
            );
            assert!(!dir.path().join("ca").exists(), "{bad}: nothing written");
        }
    }

    #[test]
    fn provision_writes_the_kits_with_private_keys_and_refuses_to_overwrite_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let req = ProvisionRequest {
            sites: vec!["site-a".into(), "site-b".into()],
            coordinator_names: vec!["coord.example".into(), "10.213.0.1".into()],
            port: 4433,
            days: 30,
        };
        let dirs = provision(&req, dir.path()).unwrap();
        assert_eq!(dirs.len(), 3);
        for d in ["coordinator", "site-a", "site-b"] {
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                assert!(dir.path().join(d).join(f).is_file(), "{d}/{f}");
            }
        }
        assert!(!dir.path().join("site-a").join("ca-key.pem").exists());
        let cfg = std::fs::read_to_string(dir.path().join("site-b").join(CLIENT_CONFIG)).unwrap();
        let cfg: KitClientConfig = toml::from_str(&cfg).unwrap();
        assert_eq!(
            cfg,
            KitClientConfig {
                coordinator: "coord.example:4433".into(),
                server_name: "coord.example".into(),
                site: "site-b".into(),
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca/ca-key.pem", "coordinator/key.pem", "site-a/key.pem"] {
                let mode = std::fs::metadata(dir.path().join(f))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        let e = provision(&req, dir.path()).unwrap_err();
        assert!(e.to_string().contains("already holds a CA"), "{e}");
        let dup = ProvisionRequest {
            sites: vec!["x".into(), "x".into()],
            ..req
        };
        let e = provision(&dup, &dir.path().join("other")).unwrap_err();
        assert!(e.to_string().contains("`x` is named twice"), "{e}");
        assert!(!dir.path().join("other").exists());
    }
}
