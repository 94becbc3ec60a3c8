//! One module per subcommand. Each exposes `Args` (clap) and `run`.

pub mod crd;
pub mod demo;
pub mod emulator;
pub mod run;
pub mod simulator;
pub mod submit;
pub mod task;
pub mod validate;
