//! `koodrive-operator validate`.

use crate::cli::CliError;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, CliError> {
    Err("`validate` is not implemented yet".into())
}
