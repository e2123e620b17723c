//! The rtnetlink client lives in kapsel-container (its veth pairs use it
//! too); the switches and interfaces use it from there.

pub(crate) use kapsel_container::netlink::Netlink;
