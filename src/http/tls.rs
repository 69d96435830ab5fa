//! HTTPS: the certificate the HTTPS door serves. Either the files `[http] tls_cert`/`tls_key`
//! name, or a self-signed certificate rtcam makes on its first start (for this machine's
//! names and addresses) and keeps in its state directory, so its fingerprint stays the same
//! and a browser told to trust it once keeps trusting it. The only `rustls`/`rcgen` user.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

/// The TLS side of the HTTPS door, as the accept loop takes it.
pub type Acceptor = tokio_rustls::TlsAcceptor;

/// File names in the state directory.
const CERT_FILE: &str = "https-cert.pem";
const KEY_FILE: &str = "https-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} = {path:?}: cannot read it: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{key} = {path:?}: no PEM certificate in it")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("{key} = {path:?}: not a certificate rtcam can read: {source}")]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: webpki::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the HTTPS certificate and key cannot be served together: {0}")]
    Config(#[source] rustls::Error),
}

/// Where the certificate came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `[http] tls_cert` and `tls_key`.
    Configured,
    /// Made by rtcam on an earlier start and read back from this directory.
    Kept(PathBuf),
    /// Made by rtcam now and saved in this directory.
    Made(PathBuf),
    /// Made by rtcam now but not saved (no state directory, or it could not be written): a
    /// new one, with a new fingerprint, on every start.
    Ephemeral,
}

/// A certificate chain and its key, ready to serve.
pub struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub source: CertSource,
}

/// What a person compares to trust the certificate: its SHA-256 fingerprint (what browsers
/// show) and the SHA-256 of its public key, base64 (what Chromium's
/// `--ignore-certificate-errors-spki-list` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    pub sha256: String,
    pub spki_sha256: String,
}

impl ServerCert {
    /// The configured files when `cert` is set; else the certificate kept in `state_dir`,
    /// made there first if there is none. `names` are the DNS names and `addresses` the IP
    /// addresses a new certificate is made for.
    pub fn load_or_make(
        cert: &str,
        key: &str,
        state_dir: Option<&Path>,
        names: &[String],
        addresses: &[IpAddr],
    ) -> Result<ServerCert, TlsError> {
        if !cert.is_empty() {
            return read_pair(
                Path::new(cert),
                "http.tls_cert",
                Path::new(key),
                "http.tls_key",
                CertSource::Configured,
            );
        }
        let Some(dir) = state_dir else {
            tracing::warn!(
                "HTTPS: no state directory to keep a certificate in (set [http] state_dir, or \
                 run under systemd with StateDirectory=); this start's certificate is new"
            );
            return make(names, addresses).map(|(c, _, _)| c);
        };
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() || key_path.exists() {
            let what = "the certificate rtcam made earlier (delete both files to make a new one)";
            return read_pair(
                &cert_path,
                what,
                &key_path,
                what,
                CertSource::Kept(dir.into()),
            );
        }
        let (mut made, cert_pem, key_pem) = make(names, addresses)?;
        match save(dir, &cert_pem, &key_pem) {
            Ok(()) => made.source = CertSource::Made(dir.into()),
            Err(e) => tracing::warn!(
                "HTTPS: cannot keep the new certificate in {}: {e}; the next start makes \
                 another",
                dir.display()
            ),
        }
        Ok(made)
    }

    pub fn fingerprints(&self) -> Fingerprints {
        fingerprints(&self.chain[0])
    }

    /// The TLS side of the HTTPS door: TLS 1.3 (every browser with WebRTC speaks it, and
    /// rustls' TLS 1.2 is left out of the build), HTTP/1.1 by ALPN (the accept loop speaks
    /// HTTP/1.1 only).
    pub fn acceptor(&self) -> Result<Acceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Acceptor::from(Arc::new(config)))
    }
}

/// The fingerprints of a DER certificate. A certificate webpki cannot parse gets an empty SPKI
/// hash; rustls would have refused to serve it before anyone asks.
pub fn fingerprints(der: &CertificateDer<'_>) -> Fingerprints {
    use base64::Engine;
    let sha256 = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let spki_sha256 = webpki::EndEntityCert::try_from(der)
        .map(|c| {
            let spki = c.subject_public_key_info();
            let hash = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
            base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
        })
        .unwrap_or_default();
    Fingerprints {
        sha256,
        spki_sha256,
    }
}

fn read_pair(
    cert_path: &Path,
    cert_key: &'static str,
    key_path: &Path,
    key_key: &'static str,
    source: CertSource,
) -> Result<ServerCert, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            key: cert_key,
            path: cert_path.into(),
            source,
        })?;
    let Some(first) = chain.first() else {
        return Err(TlsError::NoCertificate {
            key: cert_key,
            path: cert_path.into(),
        });
    };
    if let Err(source) = webpki::EndEntityCert::try_from(first) {
        return Err(TlsError::Unreadable {
            key: cert_key,
            path: cert_path.into(),
            source,
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Read {
        key: key_key,
        path: key_path.into(),
        source,
    })?;
    Ok(ServerCert { chain, key, source })
}

/// A new self-signed certificate (ECDSA P-256) for these names and addresses, with its PEM.
fn make(names: &[String], addresses: &[IpAddr]) -> Result<(ServerCert, String, String), TlsError> {
    let mut alt: Vec<String> = names.to_vec();
    alt.extend(addresses.iter().map(IpAddr::to_string));
    let mut params = rcgen::CertificateParams::new(alt).map_err(TlsError::Generate)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "rtcam on {}",
            names.first().map(String::as_str).unwrap_or("this camera")
        ),
    );
    let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let made = ServerCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        source: CertSource::Ephemeral,
    };
    Ok((made, cert_pem, key_pem))
}

/// Writes the pair into `dir` (made 0700 if missing): the key first, mode 0600, each file
/// whole under a temporary name and then renamed, so a crash leaves no half file behind.
fn save(dir: &Path, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for (name, text, mode) in [(KEY_FILE, key_pem, 0o600), (CERT_FILE, cert_pem, 0o644)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// rtcam's state directory: systemd's `$STATE_DIRECTORY` (its first entry), else `[http]
/// state_dir`, else `$XDG_STATE_HOME/rtcam`, else `~/.local/state/rtcam`. `env` reads the
/// environment (a parameter so tests need not change the process's).
pub fn state_dir(configured: &str, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(systemd) = set("STATE_DIRECTORY") {
        return systemd.split(':').next().map(PathBuf::from);
    }
    if !configured.is_empty() {
        return Some(configured.into());
    }
    if let Some(xdg) = set("XDG_STATE_HOME") {
        return Some(Path::new(&xdg).join("rtcam"));
    }
    set("HOME").map(|home| Path::new(&home).join(".local/state/rtcam"))
}

/// The DNS names a self-signed certificate is made for: this machine's hostname, the same
/// under `.local` (mDNS), and `localhost`.
pub fn own_names(hostname: &str) -> Vec<String> {
    let mut names = Vec::new();
    let host = hostname.trim_end_matches('.').to_ascii_lowercase();
    if !host.is_empty() && host != "localhost" {
        names.push(host.clone());
        if !host.ends_with(".local") && !host.contains('.') {
            names.push(format!("{host}.local"));
        }
    }
    names.push("localhost".into());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn state_dir_prefers_systemd_then_config_then_xdg_then_home() {
        let all = [
            ("STATE_DIRECTORY", "/var/lib/rtcam:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            state_dir("/etc/s", env(&all)),
            Some("/var/lib/rtcam".into())
        );
        assert_eq!(state_dir("/etc/s", env(&all[1..])), Some("/etc/s".into()));
        assert_eq!(state_dir("", env(&all[1..])), Some("/x/rtcam".into()));
        assert_eq!(
            state_dir("", env(&all[2..])),
            Some("/home/u/.local/state/rtcam".into())
        );
        assert_eq!(state_dir("", env(&[("HOME", "")])), None);
    }

    #[test]
    fn own_names_add_mdns_and_localhost() {
        assert_eq!(own_names("Cam1"), ["cam1", "cam1.local", "localhost"]);
        assert_eq!(
            own_names("cam.example.org"),
            ["cam.example.org", "localhost"]
        );
        assert_eq!(own_names("localhost"), ["localhost"]);
    }

    #[test]
    fn a_made_certificate_is_kept_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let names = own_names("cam");
        let addrs: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        let first = ServerCert::load_or_make("", "", Some(&state), &names, &addrs).unwrap();
        assert_eq!(first.source, CertSource::Made(state.clone()));
        first.acceptor().unwrap();
        let again = ServerCert::load_or_make("", "", Some(&state), &names, &addrs).unwrap();
        assert_eq!(again.source, CertSource::Kept(state.clone()));
        assert_eq!(first.fingerprints(), again.fingerprints());
        let fp = first.fingerprints();
        assert_eq!(fp.sha256.len(), 32 * 3 - 1, "{fp:?}");
        assert_eq!(fp.spki_sha256.len(), 44, "{fp:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_configured_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = ServerCert::load_or_make(missing.to_str().unwrap(), "k", None, &[], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("http.tls_cert"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let err = ServerCert::load_or_make(empty.to_str().unwrap(), "k", None, &[], &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("http.tls_cert"), "{err}");
        // A good certificate with a missing key names the key's setting.
        let state = dir.path().join("s");
        ServerCert::load_or_make("", "", Some(&state), &own_names("c"), &[]).unwrap();
        let cert = state.join(CERT_FILE);
        let err = ServerCert::load_or_make(
            cert.to_str().unwrap(),
            missing.to_str().unwrap(),
            None,
            &[],
            &[],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("http.tls_key"), "{err}");
    }
}
