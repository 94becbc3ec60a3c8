//! `koodrive-operator validate`: checks UserBatch manifests offline, before they reach a
//! cluster, against the same schema and CEL rules the API server enforces.
//!
//! Every violation goes to standard output as `FILE: <field path>: <problem>`, one per line,
//! so a pipeline can grep or annotate them; notes (skipped documents, valid objects, the
//! summary) go to standard error. Exit status 1 means at least one manifest is invalid or
//! could not be read.

use crate::cli::CliError;
use crate::validation::{self, Document};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit status: 0 if every UserBatch is valid, 1 otherwise.\n\
Example:\n  koodrive-operator validate -f examples/ -f team-a/onboarding.yaml"
)]
pub struct Args {
    /// Manifest file or directory to check (repeatable). Directories are searched
    /// recursively for `*.yaml` and `*.yml`; `-` reads standard input. Files may hold several
    /// YAML documents; documents that are not UserBatches are skipped.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        required = true,
        num_args = 1..
    )]
    pub files: Vec<PathBuf>,
}

/// A manifest path that could not be read.
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("cannot read file: {source}")]
    ReadFile { source: std::io::Error },
    #[error("cannot list directory: {source}")]
    ListDirectory { source: std::io::Error },
    #[error("cannot read standard input: {source}")]
    ReadStdin { source: std::io::Error },
}

/// What was found, for the exit status and the closing summary.
#[derive(Debug, Default)]
struct Tally {
    files: usize,
    userbatches: usize,
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
                    writeln!(stdout, "{shown}: {error}")?;
                    continue;
                }
            };
            report_file(&shown, &text, &mut tally, &mut stdout, &mut stderr)?;
        }
    }

    writeln!(
        stderr,
        "checked {} UserBatch(es) in {} file(s): {} invalid{}",
        tally.userbatches,
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
            return writeln!(stdout, "{shown}: {error}");
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

/// The files `input` stands for: itself, or every `*.yaml`/`*.yml` below it, in a stable
/// order so output is reproducible.
fn expand(input: &Path) -> Vec<Result<PathBuf, (PathBuf, InputError)>> {
    if input != Path::new("-") && input.is_dir() {
        let mut files = Vec::new();
        collect_yaml(input, &mut files);
        files
    } else {
        // A named file is checked whatever its extension: the user asked for it.
        vec![Ok(input.to_path_buf())]
    }
}

fn collect_yaml(dir: &Path, out: &mut Vec<Result<PathBuf, (PathBuf, InputError)>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            out.push(Err((
                dir.to_path_buf(),
                InputError::ListDirectory { source },
            )));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        // Symlinked directories are not followed, so a link cycle cannot recurse forever.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            collect_yaml(&path, out);
        } else if path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(Ok(path));
        }
    }
}
