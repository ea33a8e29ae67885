//! The deployment recipe in `deploy/` against the binaries it runs: every manifest parses
//! (YAML, by `yaml-rust2`), every flag a container passes is one the binary's `--help` lists,
//! the coordinator's `--listen` port is the port the Containerfile exposes, the compose file
//! publishes and the Kubernetes Service and container declare (all UDP), every path a
//! container passes (`--kit`, `--data`, `--out`, the scenario) lies on one of its mounts or in
//! the image, the kit files the manifests mount are the ones `provision` writes, and the
//! StatefulSet's kit Secrets are one per replica, named as its pods.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fedssl_tests::binary;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(rel: &str) -> Vec<Yaml> {
    let p = repo().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The flags (`--name`) a binary's help lists: `fedssl-coordinator <sub> --help` or
/// `fedssl-client --help`.
fn flags_of(program: &str, sub: Option<&str>) -> BTreeSet<String> {
    let mut c = Command::new(binary(program));
    c.args(sub).arg("--help");
    let out = c.output().unwrap();
    assert!(out.status.success(), "{program} {sub:?} --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// One invocation of our binaries found in a container's command line.
#[derive(Debug)]
struct Call {
    program: String,
    sub: Option<String>,
    args: Vec<String>,
}

impl Call {
    fn value(&self, flag: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1).map(String::as_str)
    }
}

/// The calls of `fedssl-coordinator`/`fedssl-client` in a command line (a `sh -c` script is
/// split into words; quotes and `;` are not part of a flag).
fn calls(words: &[String]) -> Vec<Call> {
    let words: Vec<String> = words
        .iter()
        .flat_map(|w| w.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|w| w.trim_end_matches(';').trim_matches('"').to_string())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if w == "fedssl-coordinator" || w == "fedssl-client" {
            let rest: Vec<String> = words[i + 1..]
                .iter()
                .take_while(|x| *x != "fedssl-coordinator" && *x != "fedssl-client")
                .cloned()
                .collect();
            let (sub, args) = if w == "fedssl-coordinator" {
                (Some(rest[0].clone()), rest[1..].to_vec())
            } else {
                (None, rest)
            };
            out.push(Call {
                program: w.clone(),
                sub,
                args,
            });
        }
    }
    out
}

/// Every `--flag` of `call` is one its binary lists.
fn check_flags(call: &Call, whence: &str) {
    let known = flags_of(&call.program, call.sub.as_deref());
    for a in call.args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            known.contains(a),
            "{whence}: {} {:?} has no flag {a}",
            call.program,
            call.sub
        );
    }
}

/// The path arguments of `call` lie under one of `mounts` or in the image's scenarios, which
/// must hold the scenario file.
fn check_paths(call: &Call, mounts: &[String], whence: &str) {
    let in_image = "/opt/fedssl/scenarios/";
    for flag in ["--kit", "--data", "--out"] {
        if let Some(p) = call.value(flag) {
            assert!(
                mounts.iter().any(|m| Path::new(p).starts_with(m)),
                "{whence}: {flag} {p} is on no mount of {mounts:?}"
            );
        }
    }
    if call.sub.as_deref() == Some("serve") {
        let scenario = &call.args[0];
        let rel = scenario.strip_prefix(in_image).unwrap_or_else(|| {
            panic!("{whence}: the scenario {scenario} is not one the image holds")
        });
        assert!(
            repo().join("scenarios").join(rel).is_file(),
            "{whence}: no scenarios/{rel}"
        );
    }
}

/// The port of the coordinator's `--listen 0.0.0.0:PORT`.
fn listen_port(call: &Call) -> u16 {
    let l = call.value("--listen").unwrap();
    l.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The files `provision` writes into one site's kit and into the coordinator's.
fn kit_files() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(binary("fedssl-coordinator"))
        .args([
            "provision",
            "--sites",
            "fedssl-site-0",
            "--coordinator-name",
            "c",
            "--out",
        ])
        .arg(dir.path().join("kits"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let names = |d: &str| {
        std::fs::read_dir(dir.path().join("kits").join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<BTreeSet<_>>()
    };
    (names("fedssl-site-0"), names("coordinator"))
}

fn containerfile_port() -> u16 {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    for bin in ["fedssl-coordinator", "fedssl-client"] {
        assert!(
            text.contains(&format!("/src/target/release/{bin}")),
            "the Containerfile does not copy {bin}"
        );
        assert!(
            text.contains(&format!("-p {bin}")),
            "the Containerfile does not build {bin}"
        );
    }
    assert!(text.contains("COPY --from=build /src/scenarios /opt/fedssl/scenarios"));
    let expose = text
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("the Containerfile exposes no port");
    let port = expose.strip_suffix("/udp").expect("EXPOSE is not UDP");
    port.trim().parse().unwrap()
}

#[test]
fn the_compose_file_runs_our_binaries_with_their_flags_ports_and_mounts() {
    let exposed = containerfile_port();
    let doc = &load("deploy/compose.yaml")[0];
    let services = doc["services"].as_hash().unwrap();
    let (site_kit, _) = kit_files();
    let mut sites = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        let mounts: Vec<(String, String)> = strs(&svc["volumes"])
            .iter()
            .map(|v| {
                let mut parts = v.split(':');
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                )
            })
            .collect();
        let inside: Vec<String> = mounts.iter().map(|m| m.1.clone()).collect();
        let cs = calls(&strs(&svc["command"]));
        assert_eq!(cs.len(), 1, "{name}: {cs:?}");
        let call = &cs[0];
        check_flags(call, name);
        check_paths(call, &inside, name);
        if call.program == "fedssl-coordinator" {
            assert_eq!(call.sub.as_deref(), Some("serve"));
            let port = listen_port(call);
            assert_eq!(port, exposed, "compose {name}: --listen port");
            assert_eq!(
                strs(&svc["ports"]),
                vec![format!("{port}:{port}/udp")],
                "{name}"
            );
        } else {
            sites += 1;
            // The kit folder mounted at --kit is a provisioned site's, from ../kits/<site>.
            let kit = call.value("--kit").unwrap();
            let (host, _) = mounts.iter().find(|m| m.1 == kit).unwrap();
            assert_eq!(host, &format!("../kits/{name}"), "{name}'s kit");
            assert!(site_kit.contains("client.toml") && site_kit.contains("key.pem"));
        }
    }
    assert_eq!(sites, 3);
}

#[test]
fn the_kubernetes_manifests_run_our_binaries_with_their_flags_ports_mounts_and_kits() {
    let exposed = containerfile_port();
    let (site_kit, coord_kit) = kit_files();
    let docs: Vec<Yaml> = ["coordinator.yaml", "sites.yaml"]
        .iter()
        .flat_map(|f| load(&format!("deploy/kubernetes/{f}")))
        .collect();
    let kustomize = &load("deploy/kubernetes/kustomization.yaml")[0];
    assert_eq!(
        strs(&kustomize["resources"]),
        vec!["coordinator.yaml", "sites.yaml"]
    );
    let of_kind = |k: &'static str| docs.iter().filter(move |d| d["kind"].as_str() == Some(k));

    let service = of_kind("Service")
        .find(|d| d["metadata"]["name"].as_str() == Some("fedssl-coordinator"))
        .unwrap();
    let sport = &service["spec"]["ports"][0];
    assert_eq!(sport["protocol"].as_str(), Some("UDP"));
    let service_port = sport["port"].as_i64().unwrap() as u16;

    let mut seen = 0;
    for w in of_kind("Deployment").chain(of_kind("StatefulSet")) {
        let kind = w["kind"].as_str().unwrap();
        let pod = &w["spec"]["template"]["spec"];
        let volumes = pod["volumes"].as_vec().unwrap();
        let c = &pod["containers"][0];
        let mounts: Vec<String> = c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|m| {
                let vname = m["name"].as_str().unwrap();
                let in_claims = w["spec"]["volumeClaimTemplates"].as_vec().is_some_and(|v| {
                    v.iter()
                        .any(|t| t["metadata"]["name"].as_str() == Some(vname))
                });
                assert!(
                    in_claims || volumes.iter().any(|v| v["name"].as_str() == Some(vname)),
                    "{kind}: volumeMount {vname} has no volume"
                );
                m["mountPath"].as_str().unwrap().to_string()
            })
            .collect();
        let mut words = strs(&c["command"]);
        words.extend(strs(&c["args"]));
        let cs = calls(&words);
        assert_eq!(cs.len(), 1, "{kind}: {cs:?}");
        let call = &cs[0];
        check_flags(call, kind);
        check_paths(call, &mounts, kind);
        let kit_volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some("kit") || v["name"].as_str() == Some("kits"))
            .unwrap();
        if kind == "Deployment" {
            let port = listen_port(call);
            assert_eq!(
                (port, service_port),
                (exposed, exposed),
                "--listen, Service and EXPOSE"
            );
            let cp = &c["ports"][0];
            assert_eq!(cp["containerPort"].as_i64(), Some(i64::from(port)));
            assert_eq!(cp["protocol"].as_str(), Some("UDP"));
            assert_eq!(
                sport["targetPort"].as_str(),
                cp["name"].as_str(),
                "Service targetPort"
            );
            assert!(kit_volume["secret"]["secretName"].as_str().is_some());
            // serve --kit reads these three.
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                assert!(coord_kit.contains(f), "provision writes no coordinator {f}");
            }
        } else {
            // One projected Secret per replica, each item under the pod's name, every file of a
            // provisioned kit; the pod mounts only its own (subPathExpr of POD_NAME).
            let replicas = w["spec"]["replicas"].as_i64().unwrap();
            let set = w["metadata"]["name"].as_str().unwrap();
            let sources = kit_volume["projected"]["sources"].as_vec().unwrap();
            assert_eq!(sources.len() as i64, replicas);
            for (k, s) in sources.iter().enumerate() {
                let site = format!("{set}-{k}");
                assert_eq!(
                    s["secret"]["name"].as_str(),
                    Some(format!("fedssl-kit-{site}").as_str())
                );
                let files: BTreeSet<String> = s["secret"]["items"]
                    .as_vec()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap();
                        assert_eq!(i["path"].as_str(), Some(format!("{site}/{key}").as_str()));
                        key.to_string()
                    })
                    .collect();
                assert_eq!(files, site_kit, "{site}'s kit items");
            }
            let kit_mount = c["volumeMounts"]
                .as_vec()
                .unwrap()
                .iter()
                .find(|m| m["mountPath"].as_str() == call.value("--kit"))
                .unwrap();
            assert_eq!(kit_mount["subPathExpr"].as_str(), Some("$(POD_NAME)"));
            let env = &c["env"][0];
            assert_eq!(env["name"].as_str(), Some("POD_NAME"));
            assert_eq!(
                env["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
                Some("metadata.name")
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 2, "a coordinator Deployment and a sites StatefulSet");
}

/// The `--virtual` slices a job's script asks for: `script` run by `shell -c` with `env` and
/// each of `indices` in `index_var`, `fedssl-client` replaced by a stand-in that prints its
/// arguments.
fn slices_of(
    shell: &str,
    script: &str,
    env: &[(&str, String)],
    index_var: &str,
    indices: std::ops::Range<i64>,
) -> Vec<fedssl_client::virtual_slice::VirtualSlice> {
    let bin = tempfile::tempdir().unwrap();
    let fake = bin.path().join("fedssl-client");
    std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    indices
        .map(|i| {
            let mut c = Command::new(shell);
            c.arg("-c")
                .arg(script)
                .env("PATH", &path)
                .env(index_var, i.to_string());
            for (k, v) in env {
                c.env(k, v);
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let args: Vec<String> = String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            let v = args.iter().position(|a| a == "--virtual").unwrap();
            args[v + 1].parse().unwrap()
        })
        .collect()
}

/// `slices` are the virtual clients 0..n, each once, in order.
fn assert_tiles(slices: &[fedssl_client::virtual_slice::VirtualSlice], n: u32, whence: &str) {
    let mut next = 0;
    for s in slices {
        assert_eq!((s.first, s.of), (next, n), "{whence}: {slices:?}");
        next = s.end;
    }
    assert_eq!(next, n, "{whence}: the slices end at {next}, not {n}");
}

#[test]
fn the_simulation_job_and_the_slurm_array_tile_the_scenarios_clients_with_virtual_slices() {
    let scenario = "scale/virtual-1000.toml";
    let text = std::fs::read_to_string(repo().join("scenarios").join(scenario)).unwrap();
    let n = toml::from_str::<toml::Value>(&text).unwrap()["federation"]["clients"]
        .as_integer()
        .unwrap() as u32;
    let docs: Vec<Yaml> = ["coordinator.yaml", "virtual-clients.yaml"]
        .iter()
        .flat_map(|f| load(&format!("deploy/kubernetes/simulation/{f}")))
        .collect();
    let kustomize = &load("deploy/kubernetes/simulation/kustomization.yaml")[0];
    assert_eq!(
        strs(&kustomize["resources"]),
        vec!["coordinator.yaml", "virtual-clients.yaml"]
    );
    let jobs: Vec<&Yaml> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("Job"))
        .collect();
    assert_eq!(jobs.len(), 2);
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let service_name = service["metadata"]["name"].as_str().unwrap();
    let service_port = service["spec"]["ports"][0]["port"].as_i64().unwrap() as u16;
    for job in jobs {
        let pod = &job["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let mounts: Vec<String> = c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .collect();
        let mut words = strs(&c["command"]);
        words.extend(strs(&c["args"]));
        let cs = calls(&words);
        assert_eq!(cs.len(), 1, "{cs:?}");
        let call = &cs[0];
        let name = job["metadata"]["name"].as_str().unwrap();
        check_flags(call, name);
        check_paths(call, &mounts, name);
        if call.sub.as_deref() == Some("serve") {
            assert_eq!(call.args[0], format!("/opt/fedssl/scenarios/{scenario}"));
            assert_eq!(
                (listen_port(call), service_port),
                (containerfile_port(), containerfile_port())
            );
            for flag in ["--cert", "--key"] {
                let p = call.value(flag).unwrap();
                assert!(
                    mounts.iter().any(|m| Path::new(p).starts_with(m)),
                    "{flag} {p}"
                );
            }
            continue;
        }
        assert_eq!(
            call.value("--coordinator"),
            Some(format!("{service_name}:{service_port}").as_str())
        );
        for flag in ["--ca", "--state-dir"] {
            let p = call.value(flag).unwrap();
            assert!(
                mounts.iter().any(|m| Path::new(p).starts_with(m)),
                "{flag} {p}"
            );
        }
        assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
        let completions = job["spec"]["completions"].as_i64().unwrap();
        let env: Vec<(&str, String)> = c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap(),
                    e["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let script = strs(&c["args"]).join(" ");
        let slices = slices_of("sh", &script, &env, "JOB_COMPLETION_INDEX", 0..completions);
        assert_tiles(&slices, n, name);
    }

    // the Slurm array: its --array range, SLICE and CLIENTS as the script defaults them
    let sbatch =
        std::fs::read_to_string(repo().join("deploy/slurm/virtual-clients.sbatch")).unwrap();
    let array = sbatch
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .unwrap();
    let (a, b) = array.split_once('-').unwrap();
    let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
    let env = [
        ("FEDSSL_COORDINATOR", "head:4433".to_string()),
        ("FEDSSL_CA", "/tmp/cert.pem".to_string()),
    ];
    let slices = slices_of("bash", &sbatch, &env, "SLURM_ARRAY_TASK_ID", a..b + 1);
    assert_tiles(&slices, n, "virtual-clients.sbatch");
    let body: Vec<String> = sbatch
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.replace('\\', " "))
        .collect();
    let cs = calls(&body);
    assert_eq!(cs.len(), 1, "{cs:?}");
    check_flags(&cs[0], "virtual-clients.sbatch");
}
