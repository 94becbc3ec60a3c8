//! `koodrive-operator validate`: checks UserBatch, KooDriveAccount and ClusterKooDriveAccount
//! manifests offline, before they reach a cluster, against the same schema and CEL rules the
//! API server enforces; UserBatches also against a real cluster's size limits as plain
//! (client-side) `kubectl apply` would meet them: 256 KiB of annotations (kubectl copies the
//! manifest into one), a 3 MiB request body and etcd's 1.5 MiB per object.
//!
//! Every violation goes to standard output as `FILE: <field path>: <problem>`, one per line,
//! so a pipeline can grep or annotate them; notes (skipped documents, valid objects, the
//! summary) go to standard error. Exit status 1 means at least one manifest is invalid or
//! could not be read.

use crate::cli::CliError;
use crate::manifests::{InputError, expand};
use crate::validation::{self, Document};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Besides the CRD's schema and CEL rules, each UserBatch is checked against a real \
cluster's size limits as client-side `kubectl apply` would send it: annotations 262144 bytes \
(kubectl copies the manifest into one), request body 3 MiB, stored object 1.5 MiB. \
KooDriveAccounts and ClusterKooDriveAccounts are checked against their CRDs' schema and CEL \
rules.\n\
Exit status: 0 if every UserBatch and account is valid, 1 otherwise.\n\
Example:\n  koodrive-operator validate -f examples/ -f team-a/onboarding.yaml"
)]
pub struct Args {
    /// Manifest file or directory to check (repeatable). Directories are searched
    /// recursively for `*.yaml` and `*.yml`; `-` reads standard input. Files may hold several
    /// YAML documents; documents that are not UserBatches or accounts are skipped.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        required = true,
        num_args = 1..
    )]
    pub files: Vec<PathBuf>,
}

/// What was found, for the exit status and the closing summary.
#[derive(Debug, Default)]
struct Tally {
    files: usize,
    userbatches: usize,
    accounts: usize,
    /// UserBatches and accounts with violations.
    invalid_userbatches: usize,
    unreadable: usize,
}

impl Tally {
    fn failed(&self) -> bool {
        self.invalid_userbatches > 0 || self.unreadable > 0
    }
}

pub fn run(args: Args) -> Result<ExitCode, CliError> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut tally = Tally::default();

    for input in &args.files {
        for file in expand(input) {
            tally.files += 1;
            let (shown, text) = match file {
                Ok(path) => (path.display().to_string(), read(&path)),
                Err((path, error)) => (path.display().to_string(), Err(error)),
            };
            let text = match text {
                Ok(text) => text,
                Err(error) => {
                    tally.unreadable += 1;
                    writeln!(stdout, "{shown}: {}", crate::report::chain(&error))?;
                    continue;
                }
            };
            report_file(&shown, &text, &mut tally, &mut stdout, &mut stderr)?;
        }
    }

    writeln!(
        stderr,
        "checked {} UserBatch(es){} in {} file(s): {} invalid{}",
        tally.userbatches,
        if tally.accounts > 0 {
            format!(" and {} account(s)", tally.accounts)
        } else {
            String::new()
        },
        tally.files,
        tally.invalid_userbatches,
        if tally.unreadable > 0 {
            format!(", {} file(s) unreadable or not YAML", tally.unreadable)
        } else {
            String::new()
        }
    )?;
    stdout.flush()?;
    Ok(if tally.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report_file(
    shown: &str,
    text: &str,
    tally: &mut Tally,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> std::io::Result<()> {
    let documents = match validation::validate_manifests(text) {
        Ok(documents) => documents,
        Err(error) => {
            tally.unreadable += 1;
            return writeln!(stdout, "{shown}: {}", crate::report::chain(&error));
        }
    };
    for document in documents {
        match document {
            Document::UserBatch { name, violations } => {
                tally.userbatches += 1;
                if violations.is_empty() {
                    writeln!(stderr, "{shown}: UserBatch {name} is valid")?;
                } else {
                    tally.invalid_userbatches += 1;
                    for violation in violations {
                        writeln!(stdout, "{shown}: {violation}")?;
                    }
                }
            }
            Document::Account {
                kind,
                name,
                violations,
            } => {
                tally.accounts += 1;
                if violations.is_empty() {
                    writeln!(stderr, "{shown}: {kind} {name} is valid")?;
                } else {
                    tally.invalid_userbatches += 1;
                    for violation in violations {
                        writeln!(stdout, "{shown}: {violation}")?;
                    }
                }
            }
            Document::Skipped { what } => {
                writeln!(stderr, "{shown}: skipped {what} (not a UserBatch)")?;
            }
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, InputError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| InputError::ReadStdin { source })?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|source| InputError::ReadFile { source })
}
