//! WebSocket: the HTTP upgrade and RFC 6455 framing, built from tungstenite's
//! sans-IO pieces so no connection carries tungstenite's 128 KiB buffers.
pub mod framing;
pub(crate) mod handshake;
