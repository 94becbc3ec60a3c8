//! An in-process emulator of the Kubernetes API subset the operator uses.
