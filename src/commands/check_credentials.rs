//! `koodrive-operator check-credentials`: the credential check behind an account's `Ready`
//! condition, run outside a cluster with credentials from the environment (as `submit` and
//! `task` take them), to try an AK/SK before putting it in a Secret.
//!
//! It sends one request that cannot create anything: `batchRegister/get` for a task ID no
//! task has ([`koodrive_client::Client::check_credentials`]). An authentication failure is
//! never retried: Huawei locks an AK/SK for 5 minutes after repeated failures.

use crate::cli::CliError;
use crate::commands::shared::{CREDENTIALS_HELP, MissingEnv, credentials_from_env};
use koodrive_client::{CREDENTIAL_CHECK_TASK_ID, Client, ClientConfig, ErrorClass};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(after_help = format!(
    "{CREDENTIALS_HELP}\n\n\
     The check is one `batchRegister/get` for task {CREDENTIAL_CHECK_TASK_ID}, which no task has: it \
     creates nothing, and KooDrive authenticates it like a create. It is the check the operator \
     runs for KooDriveAccounts and ClusterKooDriveAccounts.\n\
     Exit status: 0 if KooDrive accepted the credentials, 1 if it refused them or could not be \
     asked (the message says which)."
))]
pub struct Args {
    /// KooDrive endpoint.
    #[arg(long, env = "KOODRIVE_ENDPOINT")]
    pub endpoint: String,
    /// Accept an `http://` endpoint (simulator, tests). Never in production.
    #[arg(
        long,
        env = "KOODRIVE_ALLOW_INSECURE_ENDPOINTS",
        default_value_t = false
    )]
    pub allow_insecure_endpoints: bool,
}

/// Why the check failed. `Display` never holds the SK.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    MissingEnv(#[from] MissingEnv),
    #[error("cannot use this endpoint or these credentials")]
    Client(#[source] Box<koodrive_client::Error>),
    #[error("{}", refusal(.0))]
    Check(#[source] Box<koodrive_client::Error>),
}

fn refusal(error: &koodrive_client::Error) -> &'static str {
    match error.class() {
        ErrorClass::Authentication => "KooDrive refused the credentials",
        ErrorClass::ClockSkew => {
            "KooDrive refused the request's date, so the credentials could not be checked"
        }
        ErrorClass::Transient { .. } | ErrorClass::InDoubt => {
            "KooDrive could not be asked, so the credentials could not be checked"
        }
        ErrorClass::Rejected | ErrorClass::Invalid => "KooDrive refused the credential check",
    }
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let credentials = credentials_from_env().map_err(CheckError::from)?;
    let (access_key, user_id) = (credentials.access_key.clone(), credentials.user_id.clone());
    let client = Client::new(
        &args.endpoint,
        credentials,
        ClientConfig {
            allow_insecure_endpoints: args.allow_insecure_endpoints,
            ..ClientConfig::default()
        },
    )
    .map_err(|e| CheckError::Client(Box::new(e)))?;
    match client.check_credentials().await {
        Ok(answer) => {
            println!(
                "credentials accepted: access key {access_key}, user ID {user_id}, endpoint {} (KooDrive answered the check for task {CREDENTIAL_CHECK_TASK_ID} with code {}: {})",
                client.endpoint(),
                if answer.code.is_empty() {
                    "-"
                } else {
                    answer.code.as_str()
                },
                answer.message
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            crate::commands::shared::explain_signature_mismatch(&error);
            Err(CheckError::Check(Box::new(error)).into())
        }
    }
}
