//! Replays the fuzz corpus (fuzz/corpus/<target>/*: the seeds, and every
//! input a fuzzing run found interesting or crashing, kept as regressions)
//! through the same entry points the fuzz targets call. A panic fails the
//! test and names the file.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn replay(target: &str, f: fn(&[u8])) {
    let inputs = corpus(target);
    for (path, bytes) in &inputs {
        let r = std::panic::catch_unwind(|| f(bytes));
        assert!(r.is_ok(), "{target}: {} panics", path.display());
    }
    println!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn auth_header_corpus() {
    replay("auth_header", wasmscore_router::auth::fuzz_check);
}

#[test]
fn admin_bodies_corpus() {
    replay("admin_bodies", wasmscore_control::fuzzing::admin_bodies);
}

#[test]
fn oip_decoders_corpus() {
    replay("oip_decoders", wasmscore_server::fuzzing::oip_decoders);
}

#[test]
fn node_answers_corpus() {
    replay("node_answers", wasmscore_remote::wire::fuzzing::node_answers);
}

#[test]
fn tensor_ops_corpus() {
    replay("tensor_ops", wasmscore_tensor::fuzzing::tensors_and_ops);
}

/// The valid-token seed really is valid, so the corpus reaches the claims
/// checks and not only the decoder's refusals.
#[test]
fn the_valid_token_seed_verifies() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/auth_header/token-valid");
    let token = std::fs::read(path).unwrap();
    let key = wasmscore_router::auth::SigningKey {
        kid: "k1".into(),
        secret: b"fuzzing-secret-32-bytes-long!!!!".to_vec(),
        retired_at: None,
    };
    let claims = wasmscore_router::auth::verify(&token[7..], "iris", &[key], 1_700_000_000).unwrap();
    assert_eq!(claims.aud, "iris");
}
