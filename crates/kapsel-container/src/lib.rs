//! Kapsel's containers: a whole distribution userland with its own init
//! (system container) or one command (application container), isolated by
//! Linux namespaces and limited by cgroups.

#![deny(missing_docs)]
