//! A scoring module that misbehaves on request, for the fault tests. The body
//! names the misbehaviour: "trap", "loop", "alloc", "file", "env"; "sleep:MS"
//! waits MS milliseconds without using the CPU (a model whose run takes a
//! known time, for the autoscaling tests); anything else is echoed.

wit_bindgen::generate!({ path: "../../../wit", world: "scorer" });

use std::hint::black_box;

struct Hostile;

fn json(body: String) -> Result<Response, Error> {
    Ok(Response { body: body.into_bytes(), content_type: "application/json".into(), tensors: Vec::new() })
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Guest for Hostile {
    fn init() -> Result<(), Error> {
        Ok(())
    }

    fn run(request: Request) -> Result<Response, Error> {
        match std::str::from_utf8(&request.body).unwrap_or("") {
            "trap" => panic!("asked to trap"),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = black_box(i.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => json(format!("{{\"file\":\"read\",\"bytes\":{}}}", s.len())),
                Err(e) => json(format!("{{\"file\":\"denied\",\"error\":{}}}", quote(&e.to_string()))),
            },
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                json(format!("{{\"env_vars\":{},\"home\":{}}}", vars.len(), std::env::var("HOME").is_ok()))
            }
            other if other.starts_with("sleep:") => {
                let ms: u64 = other[6..].parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                json(format!("{{\"slept_ms\":{ms}}}"))
            }
            other => json(format!("{{\"echo\":{}}}", quote(other))),
        }
    }
}

export!(Hostile);
