//! STOMP-level failures: each becomes one ERROR frame, then the connection
//! closes.

use std::borrow::Cow;

use super::receipts;
use crate::config::Prefixes;
use crate::out::Out;
use crate::stomp::frame::{Command, ParseError};
use crate::ws::framing::CloseCode;

/// Versions we speak, for the ERROR `version` header.
pub(crate) const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

/// A STOMP-level failure: becomes an ERROR frame, then the connection closes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StompError {
    /// The ERROR `message` header (short, stable wording tests can match).
    pub message: Cow<'static, str>,
    /// The ERROR body.
    pub detail: String,
    /// WebSocket close code to use after the ERROR.
    pub close_code: CloseCode,
    /// Add the `version` header (failed version negotiation).
    pub version_header: bool,
}

impl StompError {
    /// The client broke the protocol (close code 1002).
    pub fn protocol(
        message: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> StompError {
        StompError {
            message: message.into(),
            detail: detail.into(),
            close_code: CloseCode::Protocol,
            version_header: false,
        }
    }

    /// The client went over a limit (close code 1008).
    pub fn limit(message: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> StompError {
        StompError {
            close_code: CloseCode::Policy,
            ..StompError::protocol(message, detail)
        }
    }

    /// CONNECT credentials refused (close code 1008). The same words
    /// whatever the reason: the server's debug log says why.
    pub fn auth() -> StompError {
        StompError::limit(
            crate::auth::AuthError::client_message(),
            crate::auth::AuthError::client_detail(),
        )
    }

    /// Too many receipts wait behind one still owed (close code 1008).
    pub(super) fn too_many_receipts() -> StompError {
        StompError::limit(
            "too many receipts outstanding",
            format!(
                "at most {} receipts may wait for an earlier one; wait for RECEIPTs before sending more",
                receipts::MAX_QUEUED_RECEIPTS
            ),
        )
    }

    pub(super) fn missing(header: &str, command: Command) -> StompError {
        StompError::protocol(
            format!("missing header '{header}'"),
            format!("{} requires the '{header}' header", command.name()),
        )
    }

    pub(super) fn unknown_tx(tx: &str) -> StompError {
        StompError::protocol("unknown transaction", format!("no open transaction '{tx}'"))
    }

    pub(super) fn bad_destination(dest: &str, prefixes: &Prefixes) -> StompError {
        let accepted: Vec<String> = prefixes.iter().map(|p| format!("{p}<name>")).collect();
        let user: Vec<String> = prefixes.iter().map(|p| format!("/user{p}<name>")).collect();
        StompError::protocol(
            "invalid destination",
            format!(
                "destinations are {} with a name of 1-128 characters from A-Z a-z 0-9 _ . ~ -, and user destinations (subscribe to {}, send to /user/<user>{}<name>); got '{dest}'{}",
                accepted.join(" or "),
                user.join(" or "),
                prefixes.iter().next().unwrap_or("/queue/"),
                if dest.starts_with("/app/") {
                    " (an /app/ destination needs server-side handlers, which this broker does not run: send to a room, see the README)"
                } else {
                    ""
                }
            ),
        )
    }

    pub(super) fn other_users_destination(dest: &str) -> StompError {
        StompError::protocol(
            "not your destination",
            format!(
                "'{dest}' is another user's destination: subscribe to /user/<prefix>/<name> to receive what is sent to you"
            ),
        )
    }

    /// The ERROR for a frame that could not be parsed, naming the limit
    /// it broke, if any.
    pub fn parse(e: &ParseError, limits: &crate::stomp::frame::Limits) -> StompError {
        match e {
            ParseError::FrameTooLarge => StompError {
                close_code: CloseCode::Size,
                ..StompError::limit(
                    "frame too large",
                    format!(
                        "frames are limited to {} bytes (max_frame_size)",
                        limits.max_frame_size
                    ),
                )
            },
            ParseError::TooManyHeaders => StompError::limit(
                "too many headers",
                format!(
                    "at most {} headers per frame (max_headers)",
                    limits.max_headers
                ),
            ),
            ParseError::HeaderTooLong => StompError::limit(
                "header too long",
                format!(
                    "header lines are limited to {} bytes (max_header_length)",
                    limits.max_header_length
                ),
            ),
            other => StompError::protocol(
                other.to_string(),
                "the frame does not follow the STOMP specification",
            ),
        }
    }

    /// Write this error as an ERROR frame and start closing.
    pub fn write(&self, out: &mut Out, receipt: Option<&str>) {
        let extra: &[(&str, &str)] = if self.version_header {
            &[("version", SUPPORTED_VERSIONS)]
        } else {
            &[]
        };
        out.error(&self.message, receipt, extra, &self.detail, self.close_code);
    }
}
