//! Who may score an endpoint: the settings (Azure ML's `auth_enabled`,
//! `token_auth_enabled`, `primary_key`, `secondary_key`), keys and their
//! regeneration, access tokens and the rotation of their signing keys. Each
//! change is committed, then published to the router as the endpoint's
//! [`Policy`]; the router checks every request against its copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};
use wasmscore_router::auth::{self, Claims, Policy, SigningKey};

use crate::deploy::{lock, Control};
use crate::store::{new_key, rfc3339, AuthMode, EndpointRow, TokenKey};
use crate::ControlError;

/// Default and longest token lifetimes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(auth::MAX_TOKEN_LIFETIME_S);

/// The endpoint-level settings, as a create, an update or a version's
/// deployment config carries them.
/// Debug says whether a key was given, never the key.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(default)]
    pub auth_enabled: Option<bool>,
    #[serde(default)]
    pub token_auth_enabled: Option<bool>,
    #[serde(default)]
    pub primary_key: Option<String>,
    #[serde(default)]
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = |k: &Option<String>| k.as_ref().map(|_| "<redacted>");
        f.debug_struct("AuthSettings")
            .field("auth_enabled", &self.auth_enabled)
            .field("token_auth_enabled", &self.token_auth_enabled)
            .field("primary_key", &given(&self.primary_key))
            .field("secondary_key", &given(&self.secondary_key))
            .finish()
    }
}

const FIELDS: [&str; 4] = ["auth_enabled", "token_auth_enabled", "primary_key", "secondary_key"];

impl AuthSettings {
    pub fn is_empty(&self) -> bool {
        *self == AuthSettings::default()
    }

    /// Takes the endpoint-level fields out of a version's deployment config
    /// (so keys are not stored or shown with the version).
    pub fn take_from(config: &mut Value) -> Result<AuthSettings, ControlError> {
        let Some(o) = config.as_object_mut() else {
            return Ok(AuthSettings::default());
        };
        let mut taken = serde_json::Map::new();
        for f in FIELDS {
            if let Some(v) = o.remove(f) {
                taken.insert(f.into(), v);
            }
        }
        serde_json::from_value(Value::Object(taken)).map_err(|e| ControlError::BadRequest(format!("deployment config: {e}")))
    }

    /// Applies these settings to an endpoint row. Key and token auth are
    /// never both on: `token_auth_enabled: true` turns key auth off unless
    /// `auth_enabled: true` is also given, which is refused;
    /// `token_auth_enabled: false` alone turns key auth back on.
    pub fn apply(&self, row: &mut EndpointRow) -> Result<(), ControlError> {
        let bad = |m: String| Err(ControlError::BadRequest(m));
        if self.auth_enabled == Some(true) && self.token_auth_enabled == Some(true) {
            return bad("auth_enabled (keys) and token_auth_enabled cannot both be true for one endpoint".into());
        }
        for (name, key) in [("primary_key", &self.primary_key), ("secondary_key", &self.secondary_key)] {
            if let Some(k) = key {
                let ok = (16..=128).contains(&k.len()) && k.chars().all(|c| c.is_ascii_alphanumeric() || "-._~+/=".contains(c));
                if !ok {
                    return bad(format!(
                        "{name} must be 16-128 characters of letters, digits and -._~+/= (the value is not shown)"
                    ));
                }
            }
        }
        let (mut key_on, mut token_on) = (row.auth_mode == AuthMode::Key, row.auth_mode == AuthMode::Token);
        if let Some(t) = self.token_auth_enabled {
            // Turning tokens off goes back to keys (the default), not to no
            // auth at all: only `auth_enabled: false` opens an endpoint.
            if !t && token_on && self.auth_enabled.is_none() {
                key_on = true;
            }
            token_on = t;
            if t {
                key_on = false;
            }
        }
        if let Some(k) = self.auth_enabled {
            key_on = k;
            if !k && self.token_auth_enabled.is_none() {
                token_on = false;
            }
            if k {
                token_on = false;
            }
        }
        row.auth_mode = if token_on {
            AuthMode::Token
        } else if key_on {
            AuthMode::Key
        } else {
            AuthMode::None
        };
        if let Some(k) = &self.primary_key {
            row.primary_key = k.clone();
        }
        if let Some(k) = &self.secondary_key {
            row.secondary_key = k.clone();
        }
        if row.primary_key == row.secondary_key {
            return bad("primary_key and secondary_key must differ".into());
        }
        if row.auth_mode == AuthMode::Token && row.token_keys.iter().all(|k| k.retired_at.is_some()) {
            row.token_keys.push(new_signing_key());
        }
        Ok(())
    }
}

fn new_signing_key() -> TokenKey {
    let secret = new_key();
    TokenKey {
        kid: secret[..8].to_string(),
        secret: new_key(),
        retired_at: None,
    }
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Keys that may still verify a token: the current one, and retired ones
/// for as long as a token they signed can live.
fn live_keys(row: &EndpointRow, now: u64) -> Vec<&TokenKey> {
    row.token_keys
        .iter()
        .filter(|k| k.retired_at.is_none_or(|r| r + MAX_TOKEN_LIFETIME.as_secs() > now))
        .collect()
}

fn signing_key(k: &TokenKey) -> SigningKey {
    SigningKey {
        kid: k.kid.clone(),
        secret: hex::decode(&k.secret).unwrap_or_else(|_| k.secret.as_bytes().to_vec()),
        retired_at: k.retired_at,
    }
}

/// A token's lifetime: the default, or what was asked within the limit.
pub fn token_lifetime(asked: Option<Duration>) -> Result<Duration, ControlError> {
    let lifetime = asked.unwrap_or(TOKEN_LIFETIME);
    if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(ControlError::BadRequest(format!(
            "a token lives 1 s to {} s, asked {} s",
            MAX_TOKEN_LIFETIME.as_secs(),
            lifetime.as_secs()
        )));
    }
    Ok(lifetime)
}

/// Signs a token for `audience` (an endpoint) as `get-access-token` gives it:
/// `{"accessToken", "refreshBy", "expiresOn", "tokenType"}`. Shared by `up`
/// and the router's `router-token`.
pub fn issue_token(key: &SigningKey, audience: &str, lifetime: Duration) -> Value {
    let issued = now();
    let claims = Claims {
        iss: auth::ISSUER.into(),
        aud: audience.into(),
        iat: issued.as_secs(),
        exp: issued.as_secs() + lifetime.as_secs(),
        jti: new_key()[..16].to_string(),
    };
    let token = auth::sign(key, &claims);
    // Refresh a quarter of the lifetime (at most 15 minutes) before expiry.
    let refresh_by = issued + lifetime - (lifetime / 4).min(Duration::from_secs(900));
    json!({
        "accessToken": token,
        "refreshBy": rfc3339(refresh_by),
        "expiresOn": rfc3339(Duration::from_secs(claims.exp)),
        "tokenType": "Bearer",
    })
}

/// The router's copy of an endpoint's policy.
pub(crate) fn policy(row: &EndpointRow) -> Policy {
    match row.auth_mode {
        AuthMode::None => Policy::Open,
        AuthMode::Key => Policy::keys(&row.primary_key, &row.secondary_key),
        AuthMode::Token => Policy::Tokens {
            audience: row.name.clone(),
            keys: live_keys(row, now().as_secs()).into_iter().map(signing_key).collect(),
        },
    }
}

/// How `service show` reports it.
pub(crate) fn auth_json(row: &EndpointRow) -> Value {
    json!({
        "mode": row.auth_mode,
        "auth_enabled": row.auth_mode == AuthMode::Key,
        "token_auth_enabled": row.auth_mode == AuthMode::Token,
        "token_signing_keys": row.token_keys.iter().filter(|k| k.retired_at.is_none()).map(|k| &k.kid).collect::<Vec<_>>(),
    })
}

impl Control {
    /// Changes an endpoint's auth settings; the new policy is in force when
    /// this returns.
    pub fn update_auth(&self, endpoint: &str, settings: &AuthSettings) -> Result<Value, ControlError> {
        self.change_endpoint_row(endpoint, |row| settings.apply(row))?;
        self.show(endpoint)
    }

    /// `get-keys`: `{"primaryKey", "secondaryKey"}`.
    pub fn keys(&self, endpoint: &str) -> Result<Value, ControlError> {
        let inner = lock(&self.inner);
        let ep = inner.endpoints.get(endpoint).ok_or_else(|| not_found(endpoint))?;
        Ok(json!({"primaryKey": ep.row.primary_key, "secondaryKey": ep.row.secondary_key}))
    }

    /// `regen-key --key primary|secondary`: the old key is refused from the
    /// moment this returns.
    pub fn regen_key(&self, endpoint: &str, which: &str) -> Result<Value, ControlError> {
        self.change_endpoint_row(endpoint, |row| {
            match which {
                "primary" | "Primary" => row.primary_key = new_key(),
                "secondary" | "Secondary" => row.secondary_key = new_key(),
                other => {
                    return Err(ControlError::BadRequest(format!(
                        "--key must be primary or secondary, got {other:?}"
                    )))
                }
            }
            Ok(())
        })?;
        tracing::info!(endpoint, key = which, "scoring key regenerated");
        self.keys(endpoint)
    }

    /// `get-access-token`: a token for this endpoint, signed with its
    /// current key, and when to get the next one.
    pub fn access_token(&self, endpoint: &str, lifetime: Option<Duration>) -> Result<Value, ControlError> {
        let lifetime = token_lifetime(lifetime)?;
        let inner = lock(&self.inner);
        let ep = inner.endpoints.get(endpoint).ok_or_else(|| not_found(endpoint))?;
        if ep.row.auth_mode != AuthMode::Token {
            return Err(ControlError::BadRequest(format!(
                "token auth is off for {endpoint:?} (it uses {}); turn it on with `wasmscore service update {endpoint} --token-auth-enabled true`",
                match ep.row.auth_mode {
                    AuthMode::Key => "keys",
                    _ => "no auth",
                }
            )));
        }
        let key = ep
            .row
            .token_keys
            .iter()
            .rfind(|k| k.retired_at.is_none())
            .ok_or_else(|| ControlError::Store(format!("{endpoint:?} has token auth but no signing key")))?;
        Ok(issue_token(&signing_key(key), endpoint, lifetime))
    }

    /// Starts signing with a new key; tokens signed with the old one keep
    /// verifying until they expire.
    pub fn rotate_token_key(&self, endpoint: &str) -> Result<Value, ControlError> {
        let mut kid = String::new();
        self.change_endpoint_row(endpoint, |row| {
            if row.auth_mode != AuthMode::Token {
                return Err(ControlError::BadRequest(format!(
                    "token auth is off for {endpoint:?}: there is no signing key to rotate"
                )));
            }
            let t = now().as_secs();
            for k in row.token_keys.iter_mut().filter(|k| k.retired_at.is_none()) {
                k.retired_at = Some(t);
            }
            // Keys past any token's lifetime are dropped.
            row.token_keys
                .retain(|k| k.retired_at.is_none_or(|r| r + MAX_TOKEN_LIFETIME.as_secs() > t));
            let k = new_signing_key();
            kid = k.kid.clone();
            row.token_keys.push(k);
            Ok(())
        })?;
        tracing::info!(endpoint, %kid, "token signing key rotated");
        Ok(json!({"kid": kid, "auth": auth_json(&lock(&self.inner).endpoints[endpoint].row)}))
    }

    /// Changes an endpoint's row with `f`, commits it and publishes the
    /// endpoint's table with the new policy.
    fn change_endpoint_row(
        &self,
        endpoint: &str,
        f: impl FnOnce(&mut EndpointRow) -> Result<(), ControlError>,
    ) -> Result<(), ControlError> {
        let mut inner = lock(&self.inner);
        let mut row = inner.endpoints.get(endpoint).ok_or_else(|| not_found(endpoint))?.row.clone();
        f(&mut row)?;
        inner.store.update_endpoint(&row)?;
        inner.endpoints.get_mut(endpoint).expect("checked").row = row;
        self.publish(&inner, endpoint);
        Ok(())
    }
}

fn not_found(endpoint: &str) -> ControlError {
    ControlError::NotFound(format!("no service named {endpoint:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EndpointRow {
        crate::store::tests::endpoint("iris")
    }

    fn apply(s: serde_json::Value, r: &mut EndpointRow) -> Result<(), ControlError> {
        serde_json::from_value::<AuthSettings>(s).unwrap().apply(r)
    }

    #[test]
    fn modes_follow_azure_mls_two_flags() {
        let mut r = row();
        apply(json!({"token_auth_enabled": true}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::Token);
        assert_eq!(r.token_keys.len(), 1, "token auth gets a signing key");
        apply(json!({"auth_enabled": true}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::Key);
        apply(json!({"auth_enabled": false}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::None);
        apply(json!({"auth_enabled": false, "token_auth_enabled": true}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::Token);
        // Tokens off: back to keys, not open.
        apply(json!({"token_auth_enabled": false}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::Key);
        apply(json!({"token_auth_enabled": true}), &mut r).unwrap();
        apply(json!({"token_auth_enabled": false, "auth_enabled": false}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::None, "opened only when asked");
        apply(json!({"token_auth_enabled": false}), &mut r).unwrap();
        assert_eq!(r.auth_mode, AuthMode::None, "no tokens to turn off: as it was");
        let both = apply(json!({"auth_enabled": true, "token_auth_enabled": true}), &mut r).unwrap_err();
        assert!(both.to_string().contains("cannot both"), "{both}");
    }

    #[test]
    fn given_keys_are_checked_and_never_echoed() {
        let mut r = row();
        apply(json!({"primary_key": "a-given-primary-key-123"}), &mut r).unwrap();
        assert_eq!(r.primary_key, "a-given-primary-key-123");
        let short = apply(json!({"secondary_key": "short-secret"}), &mut r).unwrap_err().to_string();
        assert!(short.contains("16-128") && !short.contains("short-secret"), "{short}");
        let same = apply(json!({"secondary_key": "a-given-primary-key-123"}), &mut r).unwrap_err();
        assert!(same.to_string().contains("differ"));
    }

    #[test]
    fn auth_fields_leave_the_version_config() {
        let mut c = json!({"num_replicas": 2, "auth_enabled": false, "primary_key": "x"});
        let s = AuthSettings::take_from(&mut c).unwrap();
        assert_eq!(c, json!({"num_replicas": 2}));
        assert_eq!((s.auth_enabled, s.primary_key.as_deref()), (Some(false), Some("x")));
        let mut bad = json!({"auth_enabled": "yes"});
        assert!(AuthSettings::take_from(&mut bad).is_err());
    }

    #[test]
    fn retired_signing_keys_verify_until_their_tokens_expire() {
        let mut r = row();
        r.auth_mode = AuthMode::Token;
        r.token_keys = vec![
            TokenKey {
                kid: "old".into(),
                secret: "00".into(),
                retired_at: Some(1000),
            },
            TokenKey {
                kid: "new".into(),
                secret: "11".into(),
                retired_at: None,
            },
        ];
        let max = MAX_TOKEN_LIFETIME.as_secs();
        assert_eq!(live_keys(&r, 1000 + max - 1).len(), 2);
        assert_eq!(live_keys(&r, 1000 + max).len(), 1);
    }
}
