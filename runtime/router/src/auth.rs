//! Who may score an endpoint, checked locally on every request: the policy
//! travels in the endpoint's published table, so the control plane is never
//! asked per request (a control-plane outage does not stop scoring).
//!
//! - Keys: `Authorization: Bearer <primary or secondary key>`. The given key
//!   and both keys are compared as SHA-256 digests in constant time, so
//!   neither content nor length leaks through timing. A regenerated key is
//!   refused as soon as the new table is published.
//! - Tokens: `Authorization: Bearer <JWT>`, HS256 only, signed with one of
//!   the endpoint's signing keys (named by `kid`; a rotated-out key stays
//!   valid for verification until every token it signed has expired); the
//!   audience must be the endpoint and `exp` in the future.
//! - Open: `auth_enabled = false`.
//!
//! Nothing here logs a key, a token or a header.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The issuer written into and required from every token.
pub const ISSUER: &str = "wasmscore";
/// The longest a token may live (`exp - iat`), in seconds: what the
/// issuer grants at most (24 h).
pub const MAX_TOKEN_LIFETIME_S: u64 = 24 * 3600;
/// How far ahead of this clock a token's `iat` may be (another host's).
pub const CLOCK_SKEW_S: u64 = 60;

/// One endpoint's auth policy, as published.
#[derive(Clone, Default)]
pub enum Policy {
    /// `auth_enabled = false`.
    #[default]
    Open,
    /// SHA-256 digests of the primary and secondary keys.
    Keys { primary: [u8; 32], secondary: [u8; 32] },
    /// Tokens signed by one of these keys, for this audience.
    Tokens { audience: String, keys: Vec<SigningKey> },
}

impl std::fmt::Debug for Policy {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Open => f.write_str("Open"),
            Policy::Keys { .. } => f.write_str("Keys"),
            Policy::Tokens { audience, keys } => write!(f, "Tokens({audience}, {} keys)", keys.len()),
        }
    }
}

/// A token signing key.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: Vec<u8>,
    /// When it was rotated out (seconds since the epoch): it verifies only
    /// tokens it signed before then, which expire within the longest
    /// lifetime after it.
    pub retired_at: Option<u64>,
}

impl Policy {
    pub fn keys(primary: &str, secondary: &str) -> Policy {
        Policy::Keys {
            primary: digest(primary.as_bytes()),
            secondary: digest(secondary.as_bytes()),
        }
    }
}

/// Why a request was refused (401). The message names what to fix and
/// never echoes what was sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs `Authorization: Bearer <{0}>`")]
    Missing(&'static str),
    #[error("the Authorization header must be `Bearer <{0}>`")]
    Scheme(&'static str),
    #[error("the key is not valid for this endpoint")]
    WrongKey,
    #[error("the token is not valid: {0}")]
    Token(TokenError),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("it is not a JWT (three base64url parts)")]
    Malformed,
    #[error("only HS256 tokens from wasmscore are accepted")]
    Algorithm,
    #[error("its signing key is unknown to this endpoint (rotated out long ago, or another endpoint's)")]
    UnknownKey,
    #[error("its signature does not verify")]
    Signature,
    #[error("it was issued for another endpoint")]
    Audience,
    #[error("it expired (get a new one with `wasmscore service get-access-token`)")]
    Expired,
    #[error("it lives longer than a token may (24 h), or was issued in the future or after its signing key was rotated out")]
    Lifetime,
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Whether `given` is `secret`, compared as SHA-256 digests in constant
/// time: neither the secret's bytes nor its length show in the timing.
pub fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    constant_time_eq(&digest(given), &digest(secret))
}

/// Compares without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks one request's `Authorization` header (raw bytes, if any) against
/// a policy at `now` (seconds since the Unix epoch).
pub fn check(policy: &Policy, authorization: Option<&[u8]>, now: u64) -> Result<(), AuthError> {
    let what = match policy {
        Policy::Open => return Ok(()),
        Policy::Keys { .. } => "key",
        Policy::Tokens { .. } => "token",
    };
    let header = authorization.ok_or(AuthError::Missing(what))?;
    let credential = header
        .strip_prefix(b"Bearer ")
        .or_else(|| header.strip_prefix(b"bearer "))
        .ok_or(AuthError::Scheme(what))?;
    let credential = credential.trim_ascii();
    match policy {
        Policy::Open => Ok(()),
        Policy::Keys { primary, secondary } => {
            let given = digest(credential);
            // Both compared, always, so timing does not say which matched.
            let a = constant_time_eq(&given, primary);
            let b = constant_time_eq(&given, secondary);
            if a | b {
                Ok(())
            } else {
                Err(AuthError::WrongKey)
            }
        }
        Policy::Tokens { audience, keys } => verify(credential, audience, keys, now).map(drop).map_err(AuthError::Token),
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// Signs claims with `key` (HS256).
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: key.kid.clone(),
    };
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("json"));
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("json"));
    let signing_input = format!("{h}.{p}");
    let mut m = mac(&key.secret);
    m.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// Verifies a token for `audience` against `keys` at `now`.
pub fn verify(token: &[u8], audience: &str, keys: &[SigningKey], now: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split(|b| *b == b'.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    // Exactly HS256: no "none", no algorithm chosen by the caller.
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let key = keys.iter().find(|k| k.kid == header.kid).ok_or(TokenError::UnknownKey)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)?;
    let mut m = mac(&key.secret);
    m.update(h);
    m.update(b".");
    m.update(p);
    m.verify_slice(&sig).map_err(|_| TokenError::Signature)?;
    // Only a token we signed gets its claims parsed.
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(TokenError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(TokenError::Algorithm);
    }
    if !constant_time_eq(claims.aud.as_bytes(), audience.as_bytes()) {
        return Err(TokenError::Audience);
    }
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    // Whoever holds a key could sign any claims: a token that outlives the
    // issuer's limit, or that a rotated-out key signed after its rotation,
    // is not one the issuer made.
    let issued_by = key.retired_at.unwrap_or(now).min(now) + CLOCK_SKEW_S;
    if claims.exp.saturating_sub(claims.iat) > MAX_TOKEN_LIFETIME_S || claims.iat > issued_by {
        return Err(TokenError::Lifetime);
    }
    Ok(claims)
}

/// The fuzz entry point (fuzz/fuzz_targets/auth_header.rs and the corpus
/// replay test): any bytes as an Authorization header against each policy
/// kind. Must never panic.
pub fn fuzz_check(data: &[u8]) {
    let key = SigningKey {
        kid: "k1".into(),
        secret: b"fuzzing-secret-32-bytes-long!!!!".to_vec(),
        retired_at: None,
    };
    let policies = [
        Policy::keys("primary-key-for-fuzzing", "secondary-key-for-fuzzing"),
        Policy::Tokens {
            audience: "iris".into(),
            keys: vec![key],
        },
        Policy::Open,
    ];
    for p in &policies {
        let _ = check(p, Some(data), 1_700_000_000);
    }
    let _ = verify(data, "iris", &[], 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, secret: &[u8]) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            secret: secret.to_vec(),
            retired_at: None,
        }
    }

    fn claims(aud: &str, exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: aud.into(),
            iat: 100,
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn keys_either_one_and_nothing_else() {
        let p = Policy::keys("primary-aaaaaaaaaaaa", "secondary-bbbbbbbbbb");
        assert_eq!(check(&p, Some(b"Bearer primary-aaaaaaaaaaaa"), 0), Ok(()));
        assert_eq!(check(&p, Some(b"Bearer secondary-bbbbbbbbbb"), 0), Ok(()));
        assert_eq!(check(&p, Some(b"Bearer primary-aaaaaaaaaaab"), 0), Err(AuthError::WrongKey));
        assert_eq!(check(&p, Some(b"Bearer "), 0), Err(AuthError::WrongKey));
        assert_eq!(check(&p, None, 0), Err(AuthError::Missing("key")));
        assert_eq!(check(&p, Some(b"Basic eHl6"), 0), Err(AuthError::Scheme("key")));
        assert_eq!(check(&Policy::Open, None, 0), Ok(()));
    }

    #[test]
    fn tokens_verify_expire_and_name_their_endpoint() {
        let k = key("k1", b"secret-one");
        let p = Policy::Tokens {
            audience: "iris".into(),
            keys: vec![k.clone()],
        };
        let t = sign(&k, &claims("iris", 200));
        let bearer = |t: &str| format!("Bearer {t}").into_bytes();
        assert_eq!(check(&p, Some(&bearer(&t)), 150), Ok(()));
        assert_eq!(check(&p, Some(&bearer(&t)), 200), Err(AuthError::Token(TokenError::Expired)));
        let other = sign(&k, &claims("fraud", 200));
        assert_eq!(check(&p, Some(&bearer(&other)), 150), Err(AuthError::Token(TokenError::Audience)));
        let forged = sign(&key("k1", b"not-the-secret"), &claims("iris", 200));
        assert_eq!(check(&p, Some(&bearer(&forged)), 150), Err(AuthError::Token(TokenError::Signature)));
        let unknown = sign(&key("k9", b"secret-one"), &claims("iris", 200));
        assert_eq!(
            check(&p, Some(&bearer(&unknown)), 150),
            Err(AuthError::Token(TokenError::UnknownKey))
        );
        // A key is not a token.
        assert_eq!(
            check(&p, Some(b"Bearer some-key"), 150),
            Err(AuthError::Token(TokenError::Malformed))
        );
    }

    #[test]
    fn alg_none_and_edited_claims_are_refused() {
        let k = key("k1", b"secret-one");
        let t = sign(&k, &claims("iris", 200));
        let parts: Vec<&str> = t.split('.').collect();
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let unsigned = format!("{none}.{}.", parts[1]);
        assert_eq!(
            verify(unsigned.as_bytes(), "iris", std::slice::from_ref(&k), 150),
            Err(TokenError::Algorithm)
        );
        // Longer expiry, same signature.
        let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("iris", 10_000)).unwrap());
        let tampered = format!("{}.{edited}.{}", parts[0], parts[2]);
        assert_eq!(verify(tampered.as_bytes(), "iris", &[k], 150), Err(TokenError::Signature));
    }

    #[test]
    fn a_rotated_out_key_still_verifies_its_tokens() {
        let old = key("k1", b"old");
        let new = key("k2", b"new");
        let t = sign(&old, &claims("iris", 200));
        assert!(verify(t.as_bytes(), "iris", &[new.clone(), old], 150).is_ok());
        assert_eq!(verify(t.as_bytes(), "iris", &[new], 150), Err(TokenError::UnknownKey));
    }

    #[test]
    fn a_token_the_issuer_could_not_have_made_is_refused() {
        let k = key("k1", b"secret-one");
        let made = |iat: u64, exp: u64| {
            let mut c = claims("iris", exp);
            c.iat = iat;
            sign(&k, &c)
        };
        let day = MAX_TOKEN_LIFETIME_S;
        assert!(verify(made(100, 100 + day).as_bytes(), "iris", std::slice::from_ref(&k), 150).is_ok());
        // Longer than a token may live, or issued ahead of this clock.
        for t in [made(100, 101 + day), made(150 + CLOCK_SKEW_S + 1, 400)] {
            assert_eq!(
                verify(t.as_bytes(), "iris", std::slice::from_ref(&k), 150),
                Err(TokenError::Lifetime)
            );
        }
        // A rotated-out key verifies what it signed before its rotation,
        // not what a holder of its secret signs after.
        let retired = SigningKey {
            retired_at: Some(120),
            ..k.clone()
        };
        assert!(verify(made(110, 500).as_bytes(), "iris", std::slice::from_ref(&retired), 150).is_ok());
        assert_eq!(
            verify(made(140 + CLOCK_SKEW_S, 500).as_bytes(), "iris", &[retired], 150 + CLOCK_SKEW_S),
            Err(TokenError::Lifetime)
        );
    }

    #[test]
    fn fuzz_entry_takes_anything() {
        for d in [
            &b""[..],
            b"Bearer",
            b"Bearer a.b.c",
            b"Bearer ...",
            &[0xff; 64],
            b"Bearer e30.e30.e30",
        ] {
            fuzz_check(d);
        }
    }
}
