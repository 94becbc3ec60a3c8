//! Command-line surface: one subcommand per module in [`crate::commands`].

use crate::commands;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The error type at the CLI boundary; every module below returns its own typed error.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "koodrive-operator",
    version,
    about = "Provision users into Huawei Cloud KooDrive from declarative UserBatch resources",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller: watch UserBatches and provision their users into KooDrive.
    Run(commands::run::Args),
    /// Print the CustomResourceDefinitions (UserBatch and the two account kinds) as YAML.
    Crd(commands::crd::Args),
    /// Check UserBatch manifests offline against the CRD schema and CEL rules.
    Validate(commands::validate::Args),
    /// Sign and send a UserBatch manifest's users straight to KooDrive (no cluster needed).
    Submit(commands::submit::Args),
    /// Query a KooDrive batch provisioning task and print its results.
    Task(commands::task::Args),
    /// Check that KooDrive accepts credentials (from the environment) with a request that
    /// creates nothing: the check behind an account's Ready condition.
    CheckCredentials(commands::check_credentials::Args),
    /// Run a local KooDrive simulator that verifies every request's signature.
    #[cfg(feature = "dev-tools")]
    Simulator(commands::simulator::Args),
    /// Run a local Kubernetes API emulator (UserBatch, Secret, Event, Lease) for experiments.
    #[cfg(feature = "dev-tools")]
    Emulator(commands::emulator::Args),
    /// Run the whole flow locally: emulator + simulator + controller, until the example is Ready.
    #[cfg(feature = "dev-tools")]
    Demo(commands::demo::Args),
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(args) => commands::run::run(args).await,
        Command::Crd(args) => commands::crd::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Submit(args) => commands::submit::run(args).await,
        Command::Task(args) => commands::task::run(args).await,
        Command::CheckCredentials(args) => commands::check_credentials::run(args).await,
        #[cfg(feature = "dev-tools")]
        Command::Simulator(args) => commands::simulator::run(args).await,
        #[cfg(feature = "dev-tools")]
        Command::Emulator(args) => commands::emulator::run(args).await,
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => commands::demo::run(args).await,
    }
}
