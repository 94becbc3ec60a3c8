//! What several subcommands share: duration parsing, KooDrive credentials and trusted CAs
//! from the environment, and the stop signal.

use koodrive_client::{CaBundleError, ClientConfig, Credentials, ExtraRoots, SecretKey};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `--help` text of the commands that read credentials from the environment.
pub const CREDENTIALS_HELP: &str = "\
Credentials are read from the environment, never from flags:
  KOODRIVE_ACCESS_KEY   access key (AK / AppId)
  KOODRIVE_SECRET_KEY   secret key (SK / AppSecret); never printed
  KOODRIVE_USER_ID      KooDrive user ID the credentials belong to";

/// A credential the environment does not provide.
#[derive(Debug, thiserror::Error)]
#[error("{name} is not set; it must hold the KooDrive {what}")]
pub struct MissingEnv {
    pub name: &'static str,
    pub what: &'static str,
}

fn env_var(name: &'static str, what: &'static str) -> Result<String, MissingEnv> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(MissingEnv { name, what })
}

/// Reads `KOODRIVE_ACCESS_KEY`, `KOODRIVE_SECRET_KEY` and `KOODRIVE_USER_ID`.
pub fn credentials_from_env() -> Result<Credentials, MissingEnv> {
    Ok(Credentials {
        access_key: env_var("KOODRIVE_ACCESS_KEY", "access key (AK)")?,
        secret_key: SecretKey::new(env_var("KOODRIVE_SECRET_KEY", "secret key (SK)")?),
        user_id: env_var("KOODRIVE_USER_ID", "user ID the credentials belong to")?,
    })
}

/// For a refused signature, prints KooDrive's canonical request next to this client's (to
/// standard error) and what their difference means. Neither holds a secret.
pub fn explain_signature_mismatch(error: &koodrive_client::Error) {
    if let Some((server, ours)) = error.canonical_requests() {
        let verdict = if server == ours {
            "They are identical, so the secret key (KOODRIVE_SECRET_KEY) does not match the access key."
        } else {
            "They differ: the request was changed on the way (proxy, Host header) or signed differently."
        };
        eprintln!(
            "KooDrive's canonical request:\n{server}\n\nthis client's canonical request:\n{ours}\n\n{verdict}"
        );
    }
}

/// Trust settings shared by `submit` and `task` (`run` has the same flag).
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// PEM file of CA certificates trusted for KooDrive in addition to the built-in roots
    /// (a private gateway or TLS-inspecting proxy); empty: none. SSL_CERT_FILE and
    /// SSL_CERT_DIR add theirs the same way.
    #[arg(long, env = "KOODRIVE_CA_BUNDLE", value_name = "FILE",
          value_parser = crate::commands::shared::parse_optional_path)]
    pub ca_bundle: Option<PathBuf>,
}

/// A path that may be empty, meaning "none": clap's own path parser refuses empty values,
/// and the Helm chart sets `KOODRIVE_CA_BUNDLE=""` when it mounts no bundle.
pub fn parse_optional_path(text: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(text))
}

impl TlsArgs {
    /// The client configuration for a one-shot command.
    pub fn client_config(
        &self,
        allow_insecure_endpoints: bool,
    ) -> Result<ClientConfig, CaBundleError> {
        Ok(ClientConfig {
            allow_insecure_endpoints,
            extra_roots: ExtraRoots::from_environment(self.ca_bundle.as_deref())?,
            ..ClientConfig::default()
        })
    }
}

/// Parses durations such as `30s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<jiff::SignedDuration>()
        .map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m"))
        .and_then(|d| {
            Duration::try_from(d).map_err(|_| "a duration cannot be negative".to_string())
        })
}

/// Cancels `token` on SIGTERM (Kubernetes' stop signal) or SIGINT (Ctrl-C).
pub async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight reconciles");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn parses_friendly_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
