//! A version as an OCI artifact: `wasmscore push` and the node's pull,
//! through oci-client (the OCI distribution client of the ORAS project).
//!
//! The layout is the CNCF Wasm OCI artifact's: the component is a layer of
//! media type `application/wasm` and the config is
//! `application/vnd.wasm.config.v0+json`. Each model file is a layer of its
//! own (`application/vnd.wasmscore.model.v1`), and a deployment config, if
//! given, one more (`application/vnd.wasmscore.deployment-config.v1+json`);
//! every layer carries its file name as `org.opencontainers.image.title`.
//! A node pulls by digest; every blob's sha256 is checked against the
//! manifest (and the manifest's against the reference) before anything runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use crate::credentials::{self, Login};
use crate::node::Fetched;

pub const WASM_LAYER: &str = "application/wasm";
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const MODEL_LAYER: &str = "application/vnd.wasmscore.model.v1";
pub const DC_LAYER: &str = "application/vnd.wasmscore.deployment-config.v1+json";
pub const ARTIFACT_TYPE: &str = "application/vnd.wasmscore.version.v1";
const TITLE: &str = "org.opencontainers.image.title";

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP (loopback registries only).
    pub insecure: bool,
    /// A CA certificate to trust besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Why a pull did not give a version.
#[derive(Debug)]
pub enum PullError {
    /// The registry could not be reached: worth retrying.
    Unreachable(String),
    /// The registry answered, and the answer is no (unknown digest, a blob
    /// that does not match its digest, an artifact that is not a version).
    Refused(String),
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A token service's answer, at most 1 MiB of it (a token is a few KB;
/// a hostile service could send without end), lossily as text.
async fn capped_text(mut answer: reqwest::Response) -> String {
    const CAP: usize = 1 << 20;
    let mut buf = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        let room = CAP - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() >= room {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether a secret may go to `u`: over https, or plain http to a loopback
/// host named with no user part (`http://127.0.0.1:1@elsewhere/` is
/// elsewhere).
fn private_enough(u: &reqwest::Url) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => {
            let host = u.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            loopback && u.username().is_empty() && u.password().is_none()
        }
        _ => false,
    }
}

fn client(reference: &Reference, opts: &RegistryOptions) -> Result<Client> {
    // reqwest builds a TLS config even for plain HTTP: ring, as the rest of
    // wasmscore (no aws-lc build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_string();
    if opts.insecure && !is_loopback(&registry) {
        bail!("--insecure (plain HTTP) is for registries on loopback; {registry} needs TLS (--registry-ca for a private CA)");
    }
    let mut cfg = ClientConfig {
        protocol: if opts.insecure {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(5)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    if let Some(ca) = &opts.ca_file {
        let data = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        cfg.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Client::try_from(cfg).context("making the registry client")
}

/// The registry's answer to this login, for `op` on `r`'s repository.
///
/// Registries behind a token service (Docker Hub, GHCR, ACR, Harbor) hand
/// the login a token per scope. oci-client asks for it lazily and, when
/// the service refuses the login, goes on anonymously, so a wrong
/// password came back as the registry's bare 401; asking first says what
/// the token service said. An identity token is traded here, as oci-client
/// sends only passwords.
async fn authorize(c: &Client, r: &Reference, opts: &RegistryOptions, op: RegistryOperation) -> Result<RegistryAuth, PullError> {
    let registry = r.resolve_registry();
    // A credential helper is a program that may take its time.
    let owned = registry.to_string();
    let login = tokio::task::spawn_blocking(move || credentials::for_registry(&owned))
        .await
        .map_err(|e| PullError::Refused(format!("asking for the login: {e}")))?
        .map_err(|e| PullError::Refused(format!("{e:#}")))?;
    let auth = match &login {
        Login::Anonymous => RegistryAuth::Anonymous,
        Login::Basic { user, password } => RegistryAuth::Basic(user.clone(), password.clone()),
        Login::Identity(token) => return Ok(RegistryAuth::Bearer(trade(r, opts, token, op).await?)),
    };
    let e = match c.auth(r, &auth, op).await {
        Ok(_) => return Ok(auth),
        Err(e) => e,
    };
    Err(match e {
        OciDistributionError::AuthenticationFailure(why) => {
            // oci-client keeps the token service's answer but not its
            // status: a service that is down (a 5xx) or busy (429) is
            // asked once more, so that a node retries rather than stops.
            let basic = match &login {
                Login::Basic { user, password } => Some((user.as_str(), password.as_str())),
                _ => None,
            };
            if let Some(busy) = unavailable(r, opts, basic, op).await {
                return Err(PullError::Unreachable(busy));
            }
            PullError::Refused(match &login {
                Login::Anonymous => format!(
                    "the token service of {registry} refused an anonymous login (docker's config has none for it): {}",
                    why.trim()
                ),
                _ => format!(
                    "the token service of {registry} refused the login ({login:?}, from docker's config): {}",
                    why.trim()
                ),
            })
        }
        e if unreachable(&e) => PullError::Unreachable(describe(&e)),
        e => PullError::Refused(format!("logging in to {registry}: {}", describe(&e))),
    })
}

/// The token service a registry names in the Bearer challenge of its
/// `/v2/` (distribution's token spec), with a client to reach it; `None`
/// for a registry that names none.
struct TokenService {
    http: reqwest::Client,
    realm: String,
    service: Option<String>,
}

async fn token_service(r: &Reference, opts: &RegistryOptions) -> Result<Option<TokenService>, PullError> {
    let registry = r.resolve_registry();
    let refused = |m: String| PullError::Refused(m);
    let mut b = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60))
        // A redirect would re-send a login or a refresh token: only where
        // it could have been sent in the first place.
        .redirect(reqwest::redirect::Policy::custom(|a| {
            if a.previous().len() < 5 && private_enough(a.url()) {
                a.follow()
            } else {
                a.stop()
            }
        }));
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca).map_err(|e| refused(format!("reading {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| refused(format!("{}: {e}", ca.display())))?;
        b = b.tls_certs_merge([cert]);
    }
    let http = b.build().map_err(|e| refused(format!("making the registry client: {e}")))?;
    let scheme = if opts.insecure { "http" } else { "https" };
    let probe = http
        .get(format!("{scheme}://{registry}/v2/"))
        .send()
        .await
        .map_err(|e| failed(&format!("asking {registry} for its token service"), e))?;
    let Some(challenge) = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(credentials::bearer_challenge)
    else {
        return Ok(None);
    };
    let param = |k: &str| challenge.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let realm = param("realm").ok_or_else(|| refused(format!("{registry}'s Bearer challenge has no realm")))?;
    Ok(Some(TokenService {
        http,
        realm,
        service: param("service"),
    }))
}

/// A request to a registry or its token service that got no answer is
/// worth retrying; one that got an answer it could not read is not.
fn failed(what: &str, e: reqwest::Error) -> PullError {
    if e.is_connect() || e.is_timeout() {
        PullError::Unreachable(format!("{what}: {e}"))
    } else {
        PullError::Refused(format!("{what}: {e}"))
    }
}

/// The scope a token for `op` on `r`'s repository asks for.
fn scope(r: &Reference, op: RegistryOperation) -> String {
    let actions = match op {
        RegistryOperation::Pull => "pull",
        RegistryOperation::Push => "pull,push",
    };
    format!("repository:{}:{actions}", r.repository())
}

/// Asks `r`'s token service for a token as oci-client does (GET, with the
/// password if any): what it answers when it is down or busy (a 5xx or a
/// 429), or when this second ask gets no answer or a token after all (a
/// flake), so the caller retries; `None` when it refuses the login again.
async fn unavailable(r: &Reference, opts: &RegistryOptions, basic: Option<(&str, &str)>, op: RegistryOperation) -> Option<String> {
    let registry = r.resolve_registry();
    let ts = match token_service(r, opts).await {
        Ok(Some(ts)) => ts,
        Ok(None) | Err(PullError::Refused(_)) => return None,
        Err(PullError::Unreachable(why)) => return Some(why),
    };
    let mut query = vec![("scope", scope(r, op))];
    query.extend(ts.service.clone().map(|s| ("service", s)));
    let mut ask = ts.http.get(&ts.realm).query(&query);
    if let Some((user, password)) = basic {
        ask = ask.basic_auth(user, Some(password));
    }
    let answer = match ask.send().await {
        Ok(a) => a,
        Err(e) => match failed(&format!("the token service of {registry} ({})", ts.realm), e) {
            PullError::Unreachable(why) => return Some(why),
            PullError::Refused(_) => return None,
        },
    };
    let status = answer.status();
    if status.is_success() {
        // Its body is a token: not for the log.
        return Some(format!(
            "the token service of {registry} ({}) refused the login, then granted it when asked again",
            ts.realm
        ));
    }
    if status.as_u16() == 429 || status.is_server_error() {
        let body = capped_text(answer).await;
        return Some(format!(
            "the token service of {registry} ({}) answered {status}: {}",
            ts.realm,
            body.trim()
        ));
    }
    None
}

/// Trades an identity (refresh) token for an access token to `op` on
/// `r`'s repository, by OAuth2 at the token service the registry names
/// (distribution's token spec, oauth.md).
async fn trade(r: &Reference, opts: &RegistryOptions, refresh: &str, op: RegistryOperation) -> Result<String, PullError> {
    let registry = r.resolve_registry();
    let refused = |m: String| PullError::Refused(m);
    let TokenService { http, realm, service } = token_service(r, opts).await?.ok_or_else(|| {
        refused(format!(
            "docker's config has an identity token for {registry}, which names no token service (no Bearer challenge at /v2/)"
        ))
    })?;
    let realm = realm.as_str();
    // The refresh token is a long-lived secret: over TLS only, but to a
    // token service on loopback (tests, a registry's own sidecar).
    if !reqwest::Url::parse(realm).is_ok_and(|u| private_enough(&u)) {
        return Err(refused(format!(
            "{registry} names the token service {realm}; an identity token goes over https only"
        )));
    }
    let scope = scope(r, op);
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", "wasmscore"),
        ("scope", scope.as_str()),
    ];
    if let Some(service) = &service {
        form.push(("service", service.as_str()));
    }
    let answer = http
        .post(realm)
        .form(&form)
        .send()
        .await
        .map_err(|e| failed(&format!("the token service of {registry} ({realm})"), e))?;
    let status = answer.status();
    let body = capped_text(answer).await;
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(PullError::Unreachable(format!(
            "the token service of {registry} ({realm}) answered {status}: {}",
            body.trim()
        )));
    }
    if !status.is_success() {
        return Err(refused(format!(
            "the token service of {registry} ({realm}) refused the identity token from docker's config: {status} {}",
            body.trim()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| refused(format!("the token service of {registry} answered no JSON: {e}")))?;
    v["access_token"]
        .as_str()
        .or_else(|| v["token"].as_str())
        .map(str::to_string)
        .ok_or_else(|| refused(format!("the token service of {registry} answered no access_token")))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn titled(name: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(TITLE.to_string(), name.to_string())]))
}

/// What `push` sends.
pub struct Push {
    pub module_name: String,
    pub module: Vec<u8>,
    pub models: Vec<(String, Vec<u8>)>,
    pub config: Option<Vec<u8>>,
}

/// Pushes a version and returns the manifest's digest.
pub async fn push(reference: &str, p: Push, opts: &RegistryOptions) -> Result<String> {
    let r: Reference = reference
        .parse()
        .with_context(|| format!("{reference:?} is not a registry reference (HOST:PORT/REPO:TAG)"))?;
    let in_words = |e: PullError| match e {
        PullError::Unreachable(m) | PullError::Refused(m) => anyhow::anyhow!("pushing to {reference}: {m}"),
    };
    let mut s = Session::start(&r, opts, RegistryOperation::Push).await.map_err(in_words)?;
    let module_digest = sha256(&p.module);
    let mut layers = vec![ImageLayer::new(p.module, WASM_LAYER.to_string(), titled(&p.module_name))];
    for (name, bytes) in p.models {
        layers.push(ImageLayer::new(bytes, MODEL_LAYER.to_string(), titled(&name)));
    }
    if let Some(dc) = p.config {
        layers.push(ImageLayer::new(dc, DC_LAYER.to_string(), titled("deploymentconfig.json")));
    }
    // The Wasm artifact's config: what the component is, and which layer.
    // No creation time: the same files give the same digest (a push is
    // reproducible, and pushing again is a no-op for nodes).
    let config = serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [module_digest],
        "component": {"target": "wasmscore:scoring/scorer"},
    });
    let config = Config::new(serde_json::to_vec(&config)?, WASM_CONFIG.to_string(), None);
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
    manifest.artifact_type = Some(ARTIFACT_TYPE.to_string());
    // Pushing again after a renewal sends what the registry has already
    // as a HEAD; the manifest is the same bytes, so the same digest.
    let pushed = loop {
        match s.c.push(&r, &layers, config.clone(), &s.auth, Some(manifest.clone())).await {
            Err(e) if s.renew_after(&e).await.map_err(in_words)? => continue,
            pushed => break pushed,
        }
    };
    let sent = manifest_digest(&manifest)?;
    let Session { auth, .. } = s;
    let resp = pushed.map_err(|e| {
        let hint = match &auth {
            _ if !denied(&e) => String::new(),
            RegistryAuth::Anonymous => format!(
                " (docker's config, $DOCKER_CONFIG or ~/.docker, has no login for {})",
                r.resolve_registry()
            ),
            RegistryAuth::Basic(user, _) => format!(" (user {user:?} may not push to {})", r.repository()),
            RegistryAuth::Bearer(_) => format!(" (the identity token may not push to {})", r.repository()),
        };
        anyhow::anyhow!("pushing to {reference}: {}{hint}", describe(&e))
    })?;
    // The digest is of the bytes sent, not read back by tag (a push to the
    // tag in between would give its digest): a registry that names
    // another is refused.
    match resp.manifest_url.rsplit('/').next() {
        Some(d) if d.starts_with("sha256:") && d != sent => {
            bail!("pushing to {reference}: the registry named the manifest {d}, but the manifest sent hashes to {sent}")
        }
        _ => Ok(sent),
    }
}

/// The digest of a manifest as oci-client sends it: canonical JSON.
fn manifest_digest(manifest: &OciImageManifest) -> Result<String> {
    let mut body = Vec::new();
    let mut json = serde_json::Serializer::with_formatter(&mut body, olpc_cjson::CanonicalFormatter::new());
    serde::Serialize::serialize(&oci_client::manifest::OciManifest::Image(manifest.clone()), &mut json)?;
    Ok(sha256(&body))
}

fn describe(e: &OciDistributionError) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    without_queries(&s)
}

/// `s` with the query of every URL in it cut: a blob redirected to object
/// storage has a signature there, and this text goes to the log and the
/// node's ready answer.
fn without_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ','))
            .map_or(rest.len(), |e| at + e);
        let url = &rest[..end];
        match url[at..].find('?') {
            Some(q) => {
                out.push_str(&url[..at + q]);
                out.push_str("?(query left out)");
            }
            None => out.push_str(url),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A 401 or 403: the registry refuses this login (or none) the operation.
fn denied(e: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode;
    match e {
        OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

fn unreachable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout(),
        // A registry that is down for a while (a 5xx from it or its proxy)
        // or rate-limits pulls (Docker Hub's 429) is tried again, as its
        // token service is.
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == oci_client::errors::OciErrorCode::Toomanyrequests),
        _ => {
            let mut cur = std::error::Error::source(e);
            while let Some(c) = cur {
                if let Some(r) = c.downcast_ref::<reqwest::Error>() {
                    return r.is_connect() || r.is_timeout();
                }
                cur = c.source();
            }
            false
        }
    }
}

/// A push's or a pull's client and login.
///
/// An access token traded for an identity token runs out (a token service
/// grants minutes: ACR three hours, Docker Hub five minutes), and
/// oci-client, holding it as a bearer token, would send it again. A request
/// the registry refuses with one is sent again with a token traded anew,
/// by a fresh client (oci-client's cache keeps the old one until its `exp`),
/// as docker's own client asks again on a 401.
struct Session<'a> {
    r: &'a Reference,
    opts: &'a RegistryOptions,
    op: RegistryOperation,
    c: Client,
    auth: RegistryAuth,
    renewed: u32,
}

/// Trades per push or pull, beyond the first: a registry that refuses
/// every fresh token stops the pull with its answer.
const RENEWALS: u32 = 3;

impl<'a> Session<'a> {
    async fn start(r: &'a Reference, opts: &'a RegistryOptions, op: RegistryOperation) -> Result<Session<'a>, PullError> {
        let c = client(r, opts).map_err(|e| PullError::Refused(format!("{e:#}")))?;
        let auth = authorize(&c, r, opts, op).await?;
        Ok(Session {
            r,
            opts,
            op,
            c,
            auth,
            renewed: 0,
        })
    }

    /// Whether `e` was the registry refusing a traded token, now traded
    /// again: the caller sends its request once more.
    async fn renew_after(&mut self, e: &OciDistributionError) -> Result<bool, PullError> {
        if !matches!(self.auth, RegistryAuth::Bearer(_)) || !denied(e) || self.renewed == RENEWALS {
            return Ok(false);
        }
        self.renewed += 1;
        let registry = self.r.resolve_registry();
        tracing::info!(
            registry,
            error = describe(e),
            "the registry refused the access token traded for the identity token (it runs out in minutes); trading it again"
        );
        let c = client(self.r, self.opts).map_err(|e| PullError::Refused(format!("{e:#}")))?;
        self.auth = authorize(&c, self.r, self.opts, self.op).await?;
        // pull_blob takes the login the manifest's pull stored.
        c.store_auth_if_needed(registry, &self.auth).await;
        self.c = c;
        Ok(true)
    }
}

/// A blob's bytes as they arrive, refused past the size its manifest says.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            let limit = self.limit;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {limit} bytes its manifest says"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Pulls a version; each blob is checked against its digest.
pub async fn pull(reference: &str, opts: &RegistryOptions) -> Result<Fetched, PullError> {
    let refused = |m: String| PullError::Refused(m);
    let r: Reference = reference
        .parse()
        .map_err(|e| refused(format!("not a registry reference (HOST:PORT/REPO@sha256:...): {e}")))?;
    let mut s = Session::start(&r, opts, RegistryOperation::Pull).await?;
    let oci = |what: String, e: OciDistributionError| {
        if unreachable(&e) {
            PullError::Unreachable(describe(&e))
        } else {
            PullError::Refused(format!("{what}: {}", describe(&e)))
        }
    };
    let want = r.digest().map(str::to_string);
    let (manifest, digest) = loop {
        match s.c.pull_image_manifest(&r, &s.auth).await {
            Ok(m) => break m,
            Err(e) if s.renew_after(&e).await? => continue,
            Err(e) => return Err(oci(format!("manifest {}", want.as_deref().unwrap_or(reference)), e)),
        }
    };
    if let Some(w) = &want {
        if *w != digest {
            return Err(refused(format!("the registry gave manifest {digest} for {w}")));
        }
    }
    let mut fetched = Fetched {
        module: Vec::new(),
        module_name: String::new(),
        models: Vec::new(),
        config: serde_json::Value::Null,
        artifact: Some(digest.clone()),
    };
    let mut modules = 0;
    for layer in &manifest.layers {
        // The manifest's size is the registry's word: room is made for at
        // most 64 MiB of it up front, and a blob longer than it is refused
        // as it arrives (a registry that sends without end runs the node
        // out of nothing).
        let size = usize::try_from(layer.size.max(0)).unwrap_or(usize::MAX);
        let mut bytes = Capped {
            bytes: Vec::with_capacity(size.min(64 << 20)),
            limit: size,
        };
        loop {
            match s.c.pull_blob(&r, layer, &mut bytes).await {
                Ok(()) => break,
                Err(e) if s.renew_after(&e).await? => bytes.bytes.clear(),
                Err(e) => return Err(oci(format!("layer {}", layer.digest), e)),
            }
        }
        let bytes = bytes.bytes;
        // oci-client checks too; this says which digest in our words.
        let got = sha256(&bytes);
        if got != layer.digest {
            return Err(refused(format!(
                "layer {} does not match its digest (its bytes hash to {got}): corrupt in the registry",
                layer.digest
            )));
        }
        let title = layer
            .annotations
            .as_ref()
            .and_then(|a| a.get(TITLE))
            .cloned()
            .unwrap_or_else(|| layer.digest.clone());
        match layer.media_type.as_str() {
            WASM_LAYER => {
                modules += 1;
                fetched.module = bytes;
                fetched.module_name = title;
            }
            MODEL_LAYER => fetched.models.push((title, bytes)),
            DC_LAYER => {
                fetched.config = serde_json::from_slice(&bytes)
                    .map_err(|e| refused(format!("layer {}: the deployment config is not JSON: {e}", layer.digest)))?;
            }
            other => {
                return Err(refused(format!(
                    "layer {} has media type {other:?}, which a wasmscore version does not have",
                    layer.digest
                )))
            }
        }
    }
    if modules != 1 {
        return Err(refused(format!(
            "manifest {digest} has {modules} {WASM_LAYER} layers; a version has one"
        )));
    }
    tracing::info!(
        artifact = reference,
        digest,
        layers = manifest.layers.len(),
        "pulled; every digest checked"
    );
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        for r in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "127.1.2.3:80"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["registry.example.com:5000", "10.0.0.1:5000", "example.com"] {
            assert!(!is_loopback(r), "{r}");
            let reference: Reference = format!("{r}/iris:v1").parse().unwrap();
            let opts = RegistryOptions {
                insecure: true,
                ca_file: None,
            };
            let e = client(&reference, &opts).err().expect("refused").to_string();
            assert!(e.contains("--insecure (plain HTTP) is for registries on loopback"), "{e}");
        }
    }

    /// A registry down for a while (its 5xx, a proxy's 502) or rate
    /// limiting (429, TOOMANYREQUESTS) is retried; what it refuses is not.
    #[test]
    fn a_registry_that_is_down_or_busy_is_retried_and_a_refusal_is_not() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/iris/manifests/v1".into(),
            message: String::new(),
        };
        let envelope = |code: &str| OciDistributionError::RegistryError {
            envelope: serde_json::from_value(serde_json::json!({"errors": [{"code": code, "message": "m"}]})).unwrap(),
            url: "http://127.0.0.1:5000/v2/".into(),
        };
        for e in [server(500), server(502), server(503), server(429), envelope("TOOMANYREQUESTS")] {
            assert!(unreachable(&e), "{e}");
        }
        for e in [server(404), server(400), envelope("MANIFEST_UNKNOWN"), envelope("DENIED")] {
            assert!(!unreachable(&e), "{e}");
        }
    }

    /// A blob longer than its manifest says is refused as it arrives.
    #[tokio::test]
    async fn a_blob_past_its_manifest_size_is_refused() {
        use tokio::io::AsyncWriteExt;
        let mut blob = Capped {
            bytes: Vec::new(),
            limit: 8,
        };
        blob.write_all(b"12345678").await.unwrap();
        let e = blob.write_all(b"9").await.unwrap_err();
        assert!(e.to_string().contains("more than the 8 bytes its manifest says"), "{e}");
        assert_eq!(blob.bytes, b"12345678");
    }

    #[test]
    fn urls_in_errors_lose_their_queries() {
        assert_eq!(
            without_queries("error sending request for url (https://s3.example/b?X-Amz-Signature=abc&X-Amz-Credential=k): timed out"),
            "error sending request for url (https://s3.example/b?(query left out)): timed out"
        );
        let plain = "Server error: url http://127.0.0.1:5000/v2/iris/blobs/sha256:ab, code: 503";
        assert_eq!(without_queries(plain), plain);
    }

    /// A refresh token goes over https, or plain http to loopback only: a
    /// user part before the host is not the host.
    #[test]
    fn a_secret_goes_over_https_or_to_loopback_only() {
        let ok = |u: &str| private_enough(&reqwest::Url::parse(u).unwrap());
        for good in [
            "https://auth.example/token",
            "http://127.0.0.1:5001/token",
            "http://localhost/t",
            "http://[::1]:80/t",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "http://127.0.0.1:1@attacker.example/token",
            "http://user@127.0.0.1/token",
            "http://auth.example/token",
            "http://10.0.0.1/token",
            "ftp://127.0.0.1/token",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }
}
