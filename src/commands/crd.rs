//! `koodrive-operator crd`: prints the UserBatch CustomResourceDefinition, the same YAML that is
//! committed as `crds/userbatch.yaml` and as the Helm chart's CRD.

use crate::cli::CliError;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(after_help = format!(
    "Install with `koodrive-operator crd | kubectl apply --server-side -f -`.\n\
     Regenerate the committed copies with:\n  {}",
    crate::crd::REGENERATE_CRD_COMMAND
))]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(crate::crd::crd_yaml().as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
