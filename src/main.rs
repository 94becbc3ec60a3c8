//! `koodrive-operator`: one binary for the controller and its companion tools.

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = koodrive_operator::cli::Cli::parse();
    match koodrive_operator::cli::dispatch(cli).await {
        Ok(code) => code,
        Err(err) => {
            // One clear line, with the chain of causes, and a non-zero exit.
            eprintln!("error: {}", koodrive_operator::report::chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
