//! The man page and shell completions the .deb ships, generated from the
//! clap definition by `examples/gen-docs.rs`: every command is documented
//! and completed, and `man` renders the page.

use clap::CommandFactory;

#[test]
fn man_page_and_completions_cover_every_command() {
    let cmd = outpost::cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .unwrap();
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq"),
        "roff: {}",
        &page[..80]
    );
    assert!(page.contains(".TH outpost 1"), "{page}");
    let visible: Vec<String> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    for want in [
        "serve",
        "check-config",
        "token",
        "status",
        "export",
        "import",
        "backup",
        "restore",
        #[cfg(feature = "bench")]
        "bench",
    ] {
        assert!(
            visible.iter().any(|v| v == want),
            "{want} not in {visible:?}"
        );
        assert!(
            page.contains(&format!("outpost\\-{}", want.replace('-', "\\-")))
                || page.contains(want),
            "{want} not in the man page"
        );
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "outpost", &mut script);
        let script = String::from_utf8(script).unwrap();
        for want in ["status", "backup", "restore", "check-config"] {
            assert!(script.contains(want), "{shell}: {want} missing");
        }
    }
}

/// The generator itself (its `main` is unused here).
#[allow(dead_code)]
#[path = "../examples/gen-docs.rs"]
mod gen_docs;

#[test]
fn the_generator_writes_what_the_deb_installs() {
    let dir = tempfile::tempdir().unwrap();
    let n = gen_docs::write_all(dir.path()).unwrap();
    assert!(n >= 12, "{n} files");
    for f in [
        "man/outpost.1",
        "man/outpost-status.1",
        "man/outpost-restore.1",
        "completions/outpost.bash",
        "completions/_outpost",
        "completions/outpost.fish",
    ] {
        let p = dir.path().join(f);
        assert!(p.metadata().map(|m| m.len() > 100).unwrap_or(false), "{f}");
    }
    // Cargo.toml's .deb assets install these files, and the unit points at
    // the page.
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    for f in [
        "man/*",
        "completions/outpost.bash",
        "completions/_outpost",
        "completions/outpost.fish",
    ] {
        assert!(
            manifest.contains(&format!("gen-docs/{f}")),
            "{f} not in [package.metadata.deb] assets"
        );
    }
    let unit = std::fs::read_to_string(format!("{root}/systemd/outpost.service")).unwrap();
    assert!(unit.contains("Documentation=man:outpost(1)"), "{unit}");
}
