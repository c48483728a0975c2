//! A small blocking client for the admin API of a running `wasmscore up`,
//! found through DATA_DIR/server.json and DATA_DIR/admin.token. Plain HTTP
//! on loopback, or TLS (verifying the server against the CA that
//! server.json names) when `up` serves HTTPS only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub struct Client {
    base: String,
    addr: String,
    token: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A TLS client config that trusts the certificates in `ca` (PEM).
fn tls_client(ca: &Path) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(c.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(cfg))
}

impl Client {
    pub fn from_data_dir(data_dir: &Path) -> Result<Self> {
        let info_path = data_dir.join("server.json");
        let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&info_path).with_context(|| {
            format!(
                "no running wasmscore for {} (start it with `wasmscore up --data-dir {}`)",
                data_dir.display(),
                data_dir.display()
            )
        })?)
        .with_context(|| format!("{} is not JSON", info_path.display()))?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .context("reading the admin token")?
            .trim()
            .to_string();
        if let Some(base) = info["url"].as_str() {
            let addr = base.trim_start_matches("http://").to_string();
            return Ok(Client {
                base: base.to_string(),
                addr,
                token,
                tls: None,
            });
        }
        // HTTPS only.
        let (Some(base), Some(addr)) = (info["tls_url"].as_str(), info["tls_addr"].as_str()) else {
            bail!("{} names no url", info_path.display());
        };
        let ca = info["tls_ca"]
            .as_str()
            .ok_or_else(|| anyhow!("{} names no CA to verify the server with", info_path.display()))?;
        Ok(Client {
            base: base.to_string(),
            addr: addr.to_string(),
            token,
            tls: Some(tls_client(Path::new(ca))?),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// One request; returns the JSON body of a 2xx answer, else the server's error message.
    pub fn request(&self, method: &str, path: &str, body: Vec<u8>) -> Result<serde_json::Value> {
        let tcp = TcpStream::connect(&self.addr)
            .with_context(|| format!("connecting to wasmscore at {} (is `wasmscore up` running?)", self.base))?;
        // Deploys compile and run init(); a large Python module can take a while uncached.
        tcp.set_read_timeout(Some(Duration::from_secs(900)))?;
        let mut s: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                let conn = rustls::ClientConnection::new(cfg.clone(), name)?;
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed HTTP response from {}", self.base))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("malformed status line"))?;
        let body = &raw[split + 4..];
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)?
        } else {
            body.to_vec()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        if !(200..300).contains(&status) {
            let msg = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            bail!("{msg} (HTTP {status})");
        }
        Ok(v)
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.request("GET", path, Vec::new())
    }

    fn upload(&self, path: &Path, what: &str) -> Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("{what} {}", path.display()))?;
        self.upload_bytes(bytes)
    }

    /// Uploads bytes as a blob; returns its sha256.
    pub fn upload_bytes(&self, bytes: Vec<u8>) -> Result<String> {
        let v = self.request("POST", "/admin/v1/blobs", bytes)?;
        Ok(v["sha256"]
            .as_str()
            .ok_or_else(|| anyhow!("upload answered without a sha256"))?
            .to_string())
    }

    /// Builds the module if given a score.py or a crate, uploads it; returns
    /// its sha256 and the name to show for it.
    pub fn upload_module(&self, module: &Path) -> Result<(String, String)> {
        let built;
        let wasm: &Path = if module.extension().is_some_and(|e| e == "wasm") {
            module
        } else {
            let dir = tempfile::tempdir()?;
            let out = dir.path().join("module.wasm");
            eprintln!("building {} ...", module.display());
            crate::build::build(module, &out)?;
            built = (dir, out);
            &built.1
        };
        let name = module.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok((self.upload(wasm, "module")?, name))
    }

    /// Registers a model file under `name` (its bytes uploaded first).
    pub fn register_model(&self, file: &Path, name: &str, tags: &serde_json::Value, description: &str) -> Result<serde_json::Value> {
        if !file.is_file() {
            bail!("model file {} does not exist", file.display());
        }
        let sha = self.upload(file, "model file")?;
        let file_name = file
            .file_name()
            .ok_or_else(|| anyhow!("model path {} has no file name", file.display()))?
            .to_string_lossy()
            .into_owned();
        let body = serde_json::json!({"name": name, "file_name": file_name, "sha256": sha, "tags": tags, "description": description});
        self.request("POST", "/admin/v1/models", serde_json::to_vec(&body)?)
    }

    /// `--model` arguments: a file is registered (under its file stem) and
    /// used; anything else names a registered model (`name:version`, or a
    /// name for its latest version).
    pub fn model_refs(&self, models: &[String]) -> Result<Vec<serde_json::Value>> {
        let mut refs = Vec::new();
        for m in models {
            let path = Path::new(m);
            let id = if path.is_file() {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let name: String = stem
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let row = self.register_model(path, &name, &serde_json::json!({}), "")?;
                let id = row["id"].as_str().unwrap_or_default().to_string();
                if row["created"] == true {
                    eprintln!("registered {} as model {id}", path.display());
                }
                id
            } else if m.contains('/') || m.ends_with(".onnx") {
                bail!("model file {m} does not exist");
            } else {
                m.clone()
            };
            // The module loads it by its registered file name.
            refs.push(serde_json::json!({"model": id}));
        }
        Ok(refs)
    }

    /// Follows a version's build until it is done; prints each phase when
    /// `progress`. Fails with the build's error when it failed.
    pub fn wait(&self, endpoint: &str, version: &str, generation: u64, progress: bool) -> Result<serde_json::Value> {
        let mut last = String::new();
        loop {
            let v = self.get(&format!("/admin/v1/endpoints/{endpoint}/versions/{version}"))?;
            let line = format!(
                "{} {}",
                v["state"].as_str().unwrap_or("?"),
                v["phase"].as_str().map(|p| format!("({p})")).unwrap_or_default()
            );
            if progress && line != last {
                eprintln!("{endpoint}/{version}: {line}");
                last = line;
            }
            let done = v["done_generation"].as_u64().unwrap_or(0);
            if done >= generation {
                if done > generation {
                    bail!("deploy #{generation} of {endpoint}/{version} was superseded by a newer change");
                }
                if let Some(e) = v["error"].as_str() {
                    bail!("{e}");
                }
                if let Some(e) = v["last_deploy_error"].as_str() {
                    bail!("{e} (the previous deployment of {endpoint}/{version} keeps serving)");
                }
                return Ok(v);
            }
            // Short: a Rust module's version is up within a few ms.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunked body"))?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        b = b.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}
