//! Kapsel's management API: identity and access control, the audit log, and
//! the HTTPS server that serves them.
//!
//! The crate knows nothing of the daemon's internals. The daemon hands it a
//! state directory (`STATE_DIR/api`, 0700, root's) and an implementation of
//! [`Guests`], the narrow seam through which the API lists guests and acts on
//! them. Everything else (users, realms, tokens, TOTP, tickets, roles, ACLs,
//! pools, the audit log, TLS) lives here.
//!
//! The server runs on a tokio runtime of its own, on threads it starts
//! ([`ApiServer::start`]); it never runs on the daemon's threads, and the
//! daemon's calls through [`Guests`] run on the runtime's blocking pool.

pub mod access;
pub mod audit;
pub mod auth;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod guests;
mod handlers;
pub mod host;
mod openapi;
pub mod pin;
pub mod server;
pub mod store;
pub mod ticket;
pub mod totp;
mod util;

pub use access::{Privilege, Privs};
pub use error::ApiError;
pub use guests::{GuestAction, GuestError, GuestKind, GuestSummary, Guests};
pub use server::{ApiServer, Limits, ServerConfig, TlsSource};
pub use store::Store;
