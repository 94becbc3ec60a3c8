//! `koodrive-operator simulator`.

use crate::cli::CliError;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> Result<ExitCode, CliError> {
    Err("`simulator` is not implemented yet".into())
}
