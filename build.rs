//! Build script: one link-time size measure for the static aarch64 edge
//! binary (8 MB budget, docs/performance.md). Everything else builds as
//! cargo would without it.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/no-eh-frame.ld");
    println!("cargo:rustc-check-cfg=cfg(outpost_no_eh_frame)");
    let var = |k: &str| env::var(k).unwrap_or_default();
    // Only where it is measured and safe: the musl aarch64 binary (linked
    // by GNU ld through the cross gcc, see .cargo/config.toml) of a release
    // profile (`release`, `bench-fast`), which aborts on panic, so no code
    // ever reads its unwind tables. Dev and test builds unwind (a failing
    // test must be caught), so they keep theirs. Cargo does not tell a build
    // script the profile's panic strategy (CARGO_CFG_PANIC is the target's
    // default), so src/main.rs refuses to build with this cfg set unless
    // `panic = "abort"`.
    if var("CARGO_CFG_TARGET_ARCH") == "aarch64"
        && var("CARGO_CFG_TARGET_ENV") == "musl"
        && var("PROFILE") == "release"
    {
        let script = format!("{}/link/no-eh-frame.ld", var("CARGO_MANIFEST_DIR"));
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
        println!("cargo:rustc-cfg=outpost_no_eh_frame");
    }
}
