//! `koodrive-operator crd`: prints the CustomResourceDefinitions (UserBatch, KooDriveAccount,
//! ClusterKooDriveAccount), the same YAML that is committed in `crds/` and as the Helm chart's
//! CRDs.

use crate::cli::CliError;
use crate::crd::CrdKind;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(after_help = format!(
    "Install with `koodrive-operator crd | kubectl apply --server-side -f -`.\n\
     Regenerate the committed copies with:\n  {}",
    crate::crd::REGENERATE_CRD_COMMAND
))]
pub struct Args {
    /// Print only this CRD (`userbatch`, `koodriveaccount` or `clusterkoodriveaccount`, the
    /// names of the committed files). Default: all three, as one multi-document stream.
    #[arg(long, value_name = "NAME", value_parser = parse_kind)]
    pub kind: Option<CrdKind>,
}

fn parse_kind(text: &str) -> Result<CrdKind, String> {
    CrdKind::parse(text).ok_or_else(|| {
        format!(
            "not one of the operator's CRDs; use one of: {}",
            CrdKind::ALL.map(CrdKind::file_stem).join(", ")
        )
    })
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let yaml = match args.kind {
        Some(kind) => kind.yaml(),
        None => crate::crd::all_crds_yaml(),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(yaml.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
