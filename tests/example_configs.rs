//! Every shipped config passes `outpost check-config`: the examples in
//! config/ and the service config systemd/outpost.toml. Their secret files
//! live in /etc/outpost on a real install; here the paths point at a temp
//! dir holding freshly generated secrets, as the .deb's postinst makes them.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files.push(root.join("systemd/outpost.toml"));
    files
}

/// The files a real install keeps in /etc/outpost: the postinst's secrets,
/// an upstream token and a TLS certificate.
fn populate(etc: &Path) {
    for name in ["jwt.secret", "mesh.secret"] {
        std::fs::write(
            etc.join(name),
            "3f1c9a7e5b2d4c6e8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f\n",
        )
        .unwrap();
    }
    std::fs::write(etc.join("upstream.token"), "eyJhbGciOiJIUzI1NiJ9.e30.sig\n").unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["hub.example.net".to_string()]).unwrap();
    std::fs::create_dir_all(etc.join("tls")).unwrap();
    std::fs::write(etc.join("tls/fullchain.pem"), made.cert.pem()).unwrap();
    std::fs::write(
        etc.join("tls/privkey.pem"),
        made.signing_key.serialize_pem(),
    )
    .unwrap();
}

/// check-config on `file` with /etc/outpost/ moved to `etc`: (code, out, err).
fn check(file: &Path, etc: &Path) -> (i32, String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let copy = etc.join(file.file_name().unwrap());
    std::fs::write(
        &copy,
        text.replace("/etc/outpost/", &format!("{}/", etc.display())),
    )
    .unwrap();
    run_cli(&["check-config", "--config", copy.to_str().unwrap()])
}

#[test]
fn every_shipped_config_passes_check_config() {
    let etc = tempfile::tempdir().unwrap();
    populate(etc.path());
    let files = shipped_configs();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "outpost.toml",
        "home-mesh.toml",
        "site-gateway.toml",
        "cloud-hub.toml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for f in &files {
        let (code, out, err) = check(f, etc.path());
        assert_eq!(code, 0, "{}: {err}", f.display());
        assert!(out.contains("[server]"), "{}: {out}", f.display());
        // No setting in a shipped file is silently ignored.
        assert!(!err.contains("warning"), "{}: {err}", f.display());
    }
}

#[test]
fn mesh_examples_enable_the_mesh_and_refuse_anonymous_writes() {
    let etc = tempfile::tempdir().unwrap();
    populate(etc.path());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["home-mesh.toml", "site-gateway.toml", "cloud-hub.toml"] {
        let (code, out, err) = check(&root.join("config").join(name), etc.path());
        assert_eq!(code, 0, "{name}: {err}");
        let eff: toml::Value =
            toml::from_str(&out).unwrap_or_else(|e| panic!("{name}: {e}\n{out}"));
        assert_eq!(
            eff["mesh"]["enabled"].as_bool(),
            Some(true),
            "{name}: {out}"
        );
        let anon = eff["auth"]["anonymous"].as_str().unwrap_or_default();
        assert_ne!(anon, "write", "{name} lets anyone write: {out}");
    }
    let gateway = check(&root.join("config/site-gateway.toml"), etc.path()).1;
    assert!(
        gateway.contains("wss://hub.example.net/ws/replicate"),
        "{gateway}"
    );
    let hub = check(&root.join("config/cloud-hub.toml"), etc.path()).1;
    assert!(hub.contains("fullchain.pem"), "{hub}");
}

#[test]
fn a_missing_secret_file_fails_check_config() {
    // The service config must not start without the postinst's secrets.
    let etc = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, _, err) = check(&root.join("systemd/outpost.toml"), etc.path());
    assert_eq!(code, 1);
    assert!(err.contains("auth.jwt_secret_file"), "{err}");
}
