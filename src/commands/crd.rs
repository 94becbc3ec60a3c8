//! `koodrive-operator crd`: prints the UserBatch CustomResourceDefinition, the same YAML that is
//! committed as `crds/userbatch.yaml` and as the Helm chart's CRD.

use crate::cli::CliError;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Regenerate the committed copies with:\n  cargo run -- crd > crds/userbatch.yaml && cp crds/userbatch.yaml charts/koodrive-operator/crds/userbatch.yaml"
)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(crate::crd::crd_yaml().as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
