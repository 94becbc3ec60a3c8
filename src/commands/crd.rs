//! `koodrive-operator crd`.

use crate::cli::CliError;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, CliError> {
    Err("`crd` is not implemented yet".into())
}
