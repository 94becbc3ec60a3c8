//! Certificate authorities the KooDrive client trusts besides the WebPKI (Mozilla) roots
//! compiled into the binary — which is why a `FROM scratch` image needs no `/etc/ssl` — for
//! KooDrive behind a private CA: a private gateway, or a TLS-inspecting proxy.

use std::fmt;
use std::path::{Path, PathBuf};

/// Certificate authorities trusted in addition to the WebPKI (Mozilla) roots that are
/// compiled into the binary, which is why a `FROM scratch` image needs no `/etc/ssl`.
/// They are for KooDrive behind a private CA: a private gateway, or a TLS-inspecting proxy.
///
/// Loaded once at start-up, so a bad file stops the process with its name instead of
/// failing every UserBatch later; cheap to clone into each client.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    certificates: Vec<reqwest::Certificate>,
    /// The files the certificates came from, for logs and `Debug`.
    sources: Vec<PathBuf>,
}

/// Why a CA bundle could not be used. Each names the file (or directory) at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot read the CA bundle {path} ({origin})")]
    Read {
        path: PathBuf,
        origin: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA bundle {path} ({origin}) holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----` blocks)"
    )]
    NoCertificate { path: PathBuf, origin: &'static str },
    #[error("the CA bundle {path} ({origin}) is not valid PEM: {detail}")]
    Pem {
        path: PathBuf,
        origin: &'static str,
        detail: String,
    },
    #[error(
        "certificate #{number} in the CA bundle {path} ({origin}) cannot be used as a trust anchor"
    )]
    Unusable {
        path: PathBuf,
        origin: &'static str,
        /// 1-based position among the file's certificates.
        number: usize,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot list the CA directory {path} (from SSL_CERT_DIR)")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExtraRoots {
    /// The CAs of `ca_bundle` (the `--ca-bundle` flag) plus those named by the OpenSSL
    /// conventions `SSL_CERT_FILE` (a PEM file) and `SSL_CERT_DIR` (`:`-separated
    /// directories of PEM files), which other tools in the same container already honour.
    pub fn from_environment(ca_bundle: Option<&Path>) -> Result<ExtraRoots, CaBundleError> {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self::load(
            ca_bundle,
            var("SSL_CERT_FILE").as_deref(),
            var("SSL_CERT_DIR").as_deref(),
        )
    }

    /// As [`ExtraRoots::from_environment`], with the variables' values passed in.
    pub fn load<'a>(
        ca_bundle: Option<&'a Path>,
        cert_file: Option<&'a Path>,
        cert_dirs: Option<&Path>,
    ) -> Result<ExtraRoots, CaBundleError> {
        // An empty path is no path, as for an empty SSL_CERT_FILE.
        let given = |path: Option<&'a Path>| path.filter(|p| !p.as_os_str().is_empty());
        let (ca_bundle, cert_file) = (given(ca_bundle), given(cert_file));
        let mut roots = Collector::default();
        let files = [
            (ca_bundle, "--ca-bundle, KOODRIVE_CA_BUNDLE"),
            (cert_file, "SSL_CERT_FILE"),
        ];
        for (file, origin) in files {
            let Some(file) = file else { continue };
            let pem = std::fs::read(file).map_err(|source| CaBundleError::Read {
                path: file.to_path_buf(),
                origin,
                source,
            })?;
            if roots.add_pem(file, origin, &pem)? == 0 {
                return Err(CaBundleError::NoCertificate {
                    path: file.to_path_buf(),
                    origin,
                });
            }
        }
        if let Some(dirs) = cert_dirs {
            for dir in std::env::split_paths(dirs).filter(|d| !d.as_os_str().is_empty()) {
                roots.add_dir(&dir)?;
            }
        }
        roots.finish()
    }

    /// How many certificates are trusted besides the built-in roots.
    pub fn len(&self) -> usize {
        self.certificates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }

    /// The files the certificates came from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The certificates, for the HTTPS client.
    pub(crate) fn certificates(&self) -> &[reqwest::Certificate] {
        &self.certificates
    }
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("certificates", &self.certificates.len())
            .field("sources", &self.sources)
            .finish()
    }
}

/// Certificates gathered from several files, each kept once: `SSL_CERT_DIR` usually holds
/// every CA twice (`name.pem` and its `hash.0` link) and `SSL_CERT_FILE` a third time.
#[derive(Default)]
struct Collector {
    seen: std::collections::HashSet<Vec<u8>>,
    /// With where each came from, to name a bad one.
    certificates: Vec<(Origin, Vec<u8>)>,
    sources: Vec<PathBuf>,
}

impl Collector {
    /// Adds the certificates of one PEM file; returns how many it held.
    fn add_pem(
        &mut self,
        path: &Path,
        origin: &'static str,
        pem: &[u8],
    ) -> Result<usize, CaBundleError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut count = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| CaBundleError::Pem {
                path: path.to_path_buf(),
                origin,
                detail: e.to_string(),
            })?;
            count += 1;
            let der = certificate.as_ref().to_vec();
            if self.seen.insert(der.clone()) {
                let from = Origin {
                    path: path.to_path_buf(),
                    origin,
                    number: count,
                };
                self.certificates.push((from, der));
            }
        }
        if count > 0 {
            self.sources.push(path.to_path_buf());
        }
        Ok(count)
    }

    /// Adds every PEM file directly in `dir`. Files holding no certificate are skipped:
    /// OpenSSL's directories also hold CRLs, READMEs and links to subdirectories.
    fn add_dir(&mut self, dir: &Path) -> Result<(), CaBundleError> {
        let read_dir = |source| CaBundleError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_dir)?
            .map(|entry| entry.map(|e| e.path()).map_err(read_dir))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files {
            // `is_file` follows symlinks: the hash links are how OpenSSL finds a CA.
            if !file.is_file() {
                continue;
            }
            let pem = std::fs::read(&file).map_err(|source| CaBundleError::Read {
                path: file.clone(),
                origin: "SSL_CERT_DIR",
                source,
            })?;
            self.add_pem(&file, "SSL_CERT_DIR", &pem)?;
        }
        Ok(())
    }

    /// Checks the certificates the way the HTTPS client will, so a bad one is reported now,
    /// with its file, rather than as a TLS set-up failure of every later client.
    fn finish(self) -> Result<ExtraRoots, CaBundleError> {
        let mut certificates = Vec::with_capacity(self.certificates.len());
        for (from, der) in &self.certificates {
            let certificate = reqwest::Certificate::from_der(der).map_err(|e| from.unusable(e))?;
            certificates.push(certificate);
        }
        // One trial client for all; only when it fails is each tried alone, to name the
        // culprit (a system bundle holds some 150 CAs).
        if trial_client(&certificates).is_err() {
            for ((from, _), certificate) in self.certificates.iter().zip(&certificates) {
                if let Err(e) = trial_client(std::slice::from_ref(certificate)) {
                    return Err(from.unusable(e));
                }
            }
        }
        Ok(ExtraRoots {
            certificates,
            sources: self.sources,
        })
    }
}

/// Where a certificate came from.
struct Origin {
    path: PathBuf,
    origin: &'static str,
    /// 1-based position among the file's certificates.
    number: usize,
}

impl Origin {
    fn unusable(&self, source: reqwest::Error) -> CaBundleError {
        CaBundleError::Unusable {
            path: self.path.clone(),
            origin: self.origin,
            number: self.number,
            source,
        }
    }
}

fn trial_client(certificates: &[reqwest::Certificate]) -> Result<(), reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder.build().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = ExtraRoots::load(Some(&missing), None, None).unwrap_err();
        assert!(matches!(err, CaBundleError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ExtraRoots::load(None, Some(&empty), None).unwrap_err();
        assert!(matches!(err, CaBundleError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ExtraRoots::load(Some(&broken), None, None).unwrap_err();
        assert!(matches!(err, CaBundleError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        let garbage_der = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage_der,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = ExtraRoots::load(Some(&garbage_der), None, None).unwrap_err();
        assert!(
            matches!(err, CaBundleError::Unusable { number: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");

        let err = ExtraRoots::load(None, None, Some(&missing)).unwrap_err();
        assert!(matches!(err, CaBundleError::ReadDir { .. }), "{err}");
    }

    #[test]
    fn nothing_configured_trusts_only_the_built_in_roots() {
        let roots = ExtraRoots::load(None, None, None).unwrap();
        assert!(roots.is_empty());
        let empty = Path::new("");
        let roots = ExtraRoots::load(Some(empty), Some(empty), Some(empty)).unwrap();
        assert!(roots.is_empty());
        // A directory of non-certificates (OpenSSL keeps CRLs and READMEs there) is no error.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README"), "hashed links to CAs\n").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let roots = ExtraRoots::load(None, None, Some(dir.path())).unwrap();
        assert!(roots.is_empty());
        assert!(roots.sources().is_empty());
    }
}
