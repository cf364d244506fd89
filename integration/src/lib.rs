//! Integration and end-to-end tests live in `tests/all`, one binary with a module per subject.
