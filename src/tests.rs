//! Table-driven tests of the matcher against the shipped libraries.
