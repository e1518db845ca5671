//! meshd.
