//! The KooDrive client against the simulator over real HTTP on loopback, in one test binary.

mod client;
