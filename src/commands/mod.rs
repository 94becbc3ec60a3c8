//! One module per subcommand. Each exposes `Args` (clap) and `run`.

pub mod check_credentials;
pub mod crd;
#[cfg(feature = "dev-tools")]
pub mod demo;
#[cfg(feature = "dev-tools")]
pub mod emulator;
pub mod run;
pub mod shared;
#[cfg(feature = "dev-tools")]
pub mod simulator;
pub mod submit;
pub mod task;
pub mod validate;
