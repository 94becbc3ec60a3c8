//! A local KooDrive simulator that verifies every request's signature.
