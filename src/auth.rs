//! Who a client is: the CONNECT frame's credentials checked against
//! `--auth`.
//!
//! - `none`: the user is the CONNECT `login` (or `anonymous`). Anyone who
//!   reaches the listener may claim any user, so the server refuses to
//!   start this way on a listener that is not loopback unless
//!   `--allow-insecure-auth` is given (checked with the other settings).
//! - `jwt`: an HS256 JSON Web Token in the CONNECT `passcode` header or an
//!   `Authorization: Bearer <token>` header; its `sub` is the user. `exp`
//!   is required; `exp` and `nbf` are checked with `--jwt-leeway-s` of
//!   clock skew. Any failure is the same answer to the client
//!   (`authentication failed`) — why it failed is logged at debug level,
//!   never the token.
//!
//! User ids, wherever they come from, are checked by [`valid_user`].

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{AuthMode, Config};

/// Longest user id in bytes.
pub const MAX_USER_LEN: usize = 128;

/// Whether `user` may be a user id: 1 to 128 bytes, no control characters
/// and no whitespace (it is shown in every MESSAGE's `x-sender` and used as
/// a path segment of the HTTP API).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && !user.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Why a CONNECT was refused. The client only ever sees
/// [`AuthError::client_message`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token (passcode or Authorization: Bearer)")]
    NoToken,
    #[error("token refused: {0}")]
    BadToken(String),
    #[error("user id not allowed (1-{MAX_USER_LEN} bytes, no spaces or control characters)")]
    BadUser,
}

impl AuthError {
    /// What the client is told, whatever the reason: nothing that helps
    /// an attacker tell a forged token from an expired one.
    pub const fn client_message() -> &'static str {
        "authentication failed"
    }

    /// The ERROR body, also the same for every reason.
    pub const fn client_detail() -> &'static str {
        "the CONNECT credentials were not accepted"
    }
}

/// The claims stampede reads (`exp` and `nbf` are checked by the library).
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

/// Checks CONNECT credentials; shared by every shard.
pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

impl Authenticator {
    /// `--auth none`.
    pub fn none() -> Authenticator {
        Authenticator { jwt: None }
    }

    /// HS256 with `secret`, `leeway_s` seconds of clock skew.
    pub fn jwt(secret: &[u8], leeway_s: u64) -> Authenticator {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            jwt: Some((DecodingKey::from_secret(secret), v)),
        }
    }

    /// From the settings (already validated: a JWT secret is set).
    pub fn from_config(cfg: &Config) -> Authenticator {
        match cfg.auth {
            AuthMode::None => Authenticator::none(),
            AuthMode::Jwt => {
                Authenticator::jwt(cfg.jwt_secret.expose().as_bytes(), cfg.jwt_leeway_s)
            }
        }
    }

    /// Whether clients prove who they are with a JWT (`--auth jwt`).
    pub fn is_jwt(&self) -> bool {
        self.jwt.is_some()
    }

    /// The user an HTTP `Authorization: Bearer <credential>` proves: a
    /// token as in CONNECT under `jwt`; under `none`, the credential is the
    /// user id itself (as insecure as `login`).
    pub fn bearer_user(&self, credential: &str) -> Result<Box<str>, AuthError> {
        match &self.jwt {
            None if credential.is_empty() => Err(AuthError::NoToken),
            None => self.user(Some(credential), None, None),
            Some(_) => self.user(None, Some(credential), None),
        }
    }

    /// The user a CONNECT frame proves, from its `login`, `passcode` and
    /// `Authorization` headers.
    pub fn user(
        &self,
        login: Option<&str>,
        passcode: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Box<str>, AuthError> {
        let user = match &self.jwt {
            None => match login.filter(|l| !l.is_empty()) {
                Some(l) => l.to_string(),
                None => "anonymous".to_string(),
            },
            Some((key, validation)) => {
                let bearer = authorization.and_then(|a| {
                    a.strip_prefix("Bearer ")
                        .or_else(|| a.strip_prefix("bearer "))
                        .map(str::trim)
                });
                let token = bearer
                    .or(passcode)
                    .filter(|t| !t.is_empty())
                    .ok_or(AuthError::NoToken)?;
                jsonwebtoken::decode::<Claims>(token, key, validation)
                    .map_err(|e| AuthError::BadToken(e.to_string()))?
                    .claims
                    .sub
            }
        };
        if valid_user(&user) {
            Ok(user.into())
        } else {
            Err(AuthError::BadUser)
        }
    }
}

/// Compare two secrets in time that depends on their lengths only, not on
/// where they first differ (an admin token must not leak byte by byte).
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value, secret: &[u8], alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn none_takes_the_login() {
        let a = Authenticator::none();
        assert_eq!(&*a.user(Some("alice"), None, None).unwrap(), "alice");
        assert_eq!(&*a.user(None, None, None).unwrap(), "anonymous");
        assert_eq!(&*a.user(Some(""), None, None).unwrap(), "anonymous");
        assert_eq!(a.user(Some("a b"), None, None), Err(AuthError::BadUser));
        assert_eq!(
            a.user(Some(&"x".repeat(129)), None, None),
            Err(AuthError::BadUser)
        );
    }

    #[test]
    fn jwt_takes_sub_from_passcode_or_bearer() {
        let a = Authenticator::jwt(SECRET, 30);
        let t = token(
            serde_json::json!({"sub": "bob", "exp": now() + 60}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(&*a.user(Some("mallory"), Some(&t), None).unwrap(), "bob");
        let bearer = format!("Bearer {t}");
        assert_eq!(&*a.user(None, None, Some(&bearer)).unwrap(), "bob");
        assert_eq!(a.user(Some("bob"), None, None), Err(AuthError::NoToken));
    }

    #[test]
    fn jwt_refuses_forged_expired_early_and_unsigned_tokens() {
        let a = Authenticator::jwt(SECRET, 30);
        let refused = |t: &str| matches!(a.user(None, Some(t), None), Err(AuthError::BadToken(_)));
        let forged = token(
            serde_json::json!({"sub": "bob", "exp": now() + 60}),
            b"another secret of thirty-two bytes!!",
            Algorithm::HS256,
        );
        assert!(refused(&forged));
        let expired = token(
            serde_json::json!({"sub": "bob", "exp": now() - 31}),
            SECRET,
            Algorithm::HS256,
        );
        assert!(refused(&expired));
        // Within the leeway an expired token still passes.
        let just = token(
            serde_json::json!({"sub": "bob", "exp": now() - 5}),
            SECRET,
            Algorithm::HS256,
        );
        assert!(a.user(None, Some(&just), None).is_ok());
        let early = token(
            serde_json::json!({"sub": "bob", "exp": now() + 600, "nbf": now() + 300}),
            SECRET,
            Algorithm::HS256,
        );
        assert!(refused(&early));
        let no_exp = token(serde_json::json!({"sub": "bob"}), SECRET, Algorithm::HS256);
        assert!(refused(&no_exp));
        let other_alg = token(
            serde_json::json!({"sub": "bob", "exp": now() + 60}),
            SECRET,
            Algorithm::HS512,
        );
        assert!(refused(&other_alg));
        // alg "none": header {"alg":"none"}, no signature.
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJib2IiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(refused(unsigned));
        assert!(refused("not a token"));
        let bad_sub = token(
            serde_json::json!({"sub": "bob\nx-sender:eve", "exp": now() + 60}),
            SECRET,
            Algorithm::HS256,
        );
        assert_eq!(a.user(None, Some(&bad_sub), None), Err(AuthError::BadUser));
    }
}
