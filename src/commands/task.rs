//! `koodrive-operator task`: query a batch provisioning task and print its results.

use crate::cli::CliError;
use crate::commands::shared::{CREDENTIALS_HELP, TlsArgs, credentials_from_env};
use crate::commands::submit::SubmitError;
use koodrive_client::Client;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(after_help = CREDENTIALS_HELP)]
pub struct Args {
    /// The task ID printed by `submit` (or recorded in a UserBatch's status).
    #[arg(value_name = "TASK_ID")]
    pub task_id: String,
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
    #[command(flatten)]
    pub tls: TlsArgs,
}

pub async fn run(args: Args) -> Result<ExitCode, CliError> {
    let client = Client::new(
        &args.endpoint,
        credentials_from_env().map_err(SubmitError::from)?,
        args.tls
            .client_config(args.allow_insecure_endpoints)
            .map_err(SubmitError::from)?,
    )
    .map_err(SubmitError::client)?;
    let report = client
        .get_task(&args.task_id)
        .await
        .map_err(SubmitError::client)?;
    println!(
        "task {} status {} total {} succeeded {} failed {} skipped {} finished {}",
        report.task_id,
        report.status.as_deref().unwrap_or("-"),
        report.total,
        report.succeeded,
        report.failed,
        report.skipped,
        if report.is_finished() { "yes" } else { "no" }
    );
    // KooDrive sets `code`/`reason` only on users that were not registered.
    for user in report
        .users
        .iter()
        .filter(|u| u.code.is_some() || u.reason.is_some())
    {
        println!(
            "user {} code {} reason {}",
            user.phone,
            user.code.as_deref().unwrap_or("-"),
            user.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}
