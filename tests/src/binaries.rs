//! The workspace's binaries (`fedssl-coordinator`, `fedssl-client`) for tests that run them as
//! processes. A test outside the binaries' own package has no `CARGO_BIN_EXE_…`: the binaries
//! are looked up in the profile folder of the target dir that holds the running test
//! executable (`<target>/<profile>/deps/<test>` → `<target>/<profile>/`). `cargo test` does not
//! build them for this crate, so the first call in a test process runs
//! `cargo build -p fedssl-coordinator -p fedssl-client` (cargo from `CARGO`, as cargo sets it
//! for the tests it runs) into that folder, which also rebuilds binaries older than their
//! sources. Without cargo at hand, binaries already there are used as they are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace's root manifest (this crate is one of its members).
const WORKSPACE_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");

/// A command that runs the `fedssl-client` binary.
///
/// # Panics
/// As [`binary`].
pub fn client_command() -> Command {
    Command::new(binary("fedssl-client"))
}

/// Path of the workspace binary `name` (e.g. `"fedssl-client"`) of this build's profile,
/// built (once per test process) first.
///
/// # Panics
/// If the test executable's folder cannot be found, the build fails, or no binary `name` is
/// there.
pub fn binary(name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    static BUILT: OnceLock<Result<(), Unbuilt>> = OnceLock::new();
    match BUILT.get_or_init(|| build(&dir)) {
        Err(Unbuilt::Failed(why)) => panic!("cannot build the workspace's binaries: {why}"),
        Err(Unbuilt::NoCargo(why)) if !path.is_file() => panic!("no {}: {why}", path.display()),
        _ if !path.is_file() => panic!("no {} after building the binaries", path.display()),
        _ => path,
    }
}

/// Why the binaries were not built.
#[derive(Debug)]
enum Unbuilt {
    /// Cargo could not be started: binaries already built are used as they are.
    NoCargo(String),
    /// Cargo ran and failed (its stderr).
    Failed(String),
}

/// `<target>/<profile>/`: the folder of the running test executable, above its `deps/` (or an
/// example's, above its `examples/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable has no folder")
        .to_path_buf();
    // a test is in `deps/`, an example (`bench_federation`) in `examples/`
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// Builds both binaries of the profile whose folder is `dir` (`debug` is the dev profile)
/// into `dir`.
fn build(dir: &Path) -> Result<(), Unbuilt> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = dir
        .parent()
        .ok_or_else(|| Unbuilt::NoCargo("the profile folder has no parent".into()))?;
    let mut cmd = Command::new(&cargo);
    // What cargo sets for the test it runs is no setting of this build: left in, a build script
    // that watches one of them (ring's watches CARGO_MANIFEST_DIR) would rerun, and every
    // crate above it would be rebuilt here and again by the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_a_test) {
            cmd.env_remove(&key);
        }
    }
    cmd.args(["build", "--quiet", "--manifest-path", WORKSPACE_MANIFEST])
        .args(["-p", "fedssl-coordinator", "-p", "fedssl-client", "--bins"])
        .arg("--target-dir")
        .arg(target_dir);
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| Unbuilt::NoCargo(format!("cannot run {}: {e}", cargo.to_string_lossy())))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Unbuilt::Failed(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Whether `key` is one of the variables cargo sets for the crate it compiles or the test it
/// runs (not a setting of cargo itself, such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
fn set_by_cargo_for_a_test(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}
