//! The UserBatch reconciler.
