//! Demo backends (in progress).
