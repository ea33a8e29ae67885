//! Enrolment and mutual TLS over real QUIC on loopback: provisioned kits, and every way a
//! client without a valid enrolment is refused before any model byte — no certificate, one
//! of another CA, an expired one, a revoked site, a site outside `federation.sites`, a site
//! asking for another's shard — then a whole `serve --kit` run whose `rounds.jsonl` and
//! `summary.json` name the enrolled sites.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fedssl_client::tls::{client_config_as, tls_refusal, SiteCredentials};
use fedssl_coordinator::provision::{provision, Authority, Issued, ProvisionRequest};
use fedssl_coordinator::server::handshake::accept_loop;
use fedssl_coordinator::server::registry::Registry;
use fedssl_coordinator::server::revocation::RevocationList;
use fedssl_coordinator::server::sites::SiteAdmission;
use fedssl_coordinator::server::tls;
use fedssl_shared::protocol::{
    read_message, write_message, ClientMessage, ServerMessage, PROTOCOL_VERSION,
};

fn creds(i: &Issued) -> SiteCredentials {
    SiteCredentials {
        cert_pem: i.cert_pem.clone().into_bytes(),
        key_pem: i.key_pem.clone().into_bytes(),
    }
}

/// A coordinator on loopback with a certificate of `ca`, admitting its sites of `allow`
/// (all when empty) that `revoked` does not list.
async fn server(
    ca: &Authority,
    allow: &[&str],
    revoked: Option<&Path>,
) -> (SocketAddr, Arc<Registry>) {
    let run = fedssl_shared::protocol::RunInfo::of(&fedssl_tests::tiny(&[]));
    let coord = ca.issue_coordinator(&["localhost".into()], 3).unwrap();
    let id = tls::load_identity_pem(&coord.cert_pem, &coord.key_pem).unwrap();
    let verifier = tls::client_verifier(ca.cert_pem().as_bytes(), Path::new("ca.pem")).unwrap();
    let ep = quinn::Endpoint::server(
        tls::server_config(&id, Duration::from_secs(5), Some(verifier), 1).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let reg = Registry::new(run);
    let admission = SiteAdmission {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        revoked: revoked.map(|p| RevocationList::open(p).unwrap()),
    };
    tokio::spawn(accept_loop(ep, reg.clone(), Arc::new(admission)));
    (addr, reg)
}

/// Joins as a client trusting `ca_pem` with `site`'s credentials, asking for `shard`: the
/// client id of the welcome, or the refusal as the client says it.
async fn join(
    addr: SocketAddr,
    ca_pem: &str,
    site: Option<&SiteCredentials>,
    shard: Option<(u32, u32)>,
) -> Result<u32, String> {
    let cfg = client_config_as(ca_pem.as_bytes(), site, Duration::from_secs(5)).unwrap();
    let (_ep, conn) = fedssl_client::open(addr, "localhost", cfg)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let said = async {
        let (mut s, mut r) = conn.open_bi().await?;
        let hello = ClientMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "test".into(),
            shard,
        };
        write_message(&mut s, &hello).await?;
        let m: ServerMessage =
            tokio::time::timeout(Duration::from_secs(10), read_message(&mut r)).await??;
        std::mem::forget((s, r));
        anyhow::Ok(m)
    }
    .await;
    let out = match said {
        Ok(ServerMessage::Welcome { client_id, .. }) => Ok(client_id),
        Ok(ServerMessage::Refused { reason }) => Err(reason),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(conn
            .close_reason()
            .as_ref()
            .and_then(tls_refusal)
            .unwrap_or_else(|| format!("{e:#}"))),
    };
    if out.is_ok() {
        std::mem::forget(conn); // stays connected for the rest of the test
    }
    out
}

#[tokio::test]
async fn only_enrolled_valid_unrevoked_sites_get_in_and_the_others_hear_why() {
    let ca = Authority::new("test", 3).unwrap();
    let other_ca = Authority::new("other", 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "# none yet\n").unwrap();
    let (addr, reg) = server(&ca, &["site-a", "site-b", "site-c"], Some(&revoked)).await;
    let pem = ca.cert_pem();
    let a = creds(&ca.issue_site("site-a", 3).unwrap());
    let b = creds(&ca.issue_site("site-b", 3).unwrap());

    // no certificate: refused by TLS, and the client says so
    let e = join(addr, &pem, None, None).await.unwrap_err();
    assert!(e.contains("presented no certificate"), "{e}");
    // a certificate of another CA (with the same site name)
    let forged = creds(&other_ca.issue_site("site-a", 3).unwrap());
    let e = join(addr, &pem, Some(&forged), None).await.unwrap_err();
    assert!(e.contains("does not trust the CA"), "{e}");
    // an expired certificate of the right CA
    let old = creds(&ca.issue_site("site-c", -1).unwrap());
    let e = join(addr, &pem, Some(&old), None).await.unwrap_err();
    assert!(e.contains("expired"), "{e}");
    // a site the CA certified but the run does not enrol
    let d = creds(&ca.issue_site("site-d", 3).unwrap());
    let e = join(addr, &pem, Some(&d), None).await.unwrap_err();
    assert_eq!(
        e,
        "site `site-d` is not enrolled in this run (federation.sites)"
    );
    // a site asking for another site's shard
    let e = join(addr, &pem, Some(&b), Some((0, 3))).await.unwrap_err();
    assert!(e.contains("holds shard 1"), "{e}");
    assert!(reg.ids().is_empty(), "nobody was admitted: {:?}", reg.ids());

    // the enrolled sites get their place in federation.sites as their id
    assert_eq!(join(addr, &pem, Some(&a), None).await, Ok(0));
    assert_eq!(join(addr, &pem, Some(&b), Some((1, 3))).await, Ok(1));
    assert_eq!(reg.sites().get(&1).map(String::as_str), Some("site-b"));

    // revoked while the coordinator runs: the list is re-read on change
    std::fs::write(&revoked, "site-b\n").unwrap();
    let e = join(addr, &pem, Some(&b), None).await.unwrap_err();
    assert_eq!(e, "site `site-b` is revoked");
}

#[tokio::test]
async fn a_provisioned_kit_verifies_against_its_ca_only_and_the_client_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let req = ProvisionRequest {
        sites: vec!["site-a".into(), "site-b".into()],
        coordinator_names: vec!["localhost".into()],
        port: 4433,
        days: 3,
    };
    provision(&req, &dir.path().join("kits")).unwrap();
    provision(&req, &dir.path().join("other")).unwrap();
    let kit = fedssl_client::kit::read_kit(&dir.path().join("kits").join("site-b")).unwrap();
    assert_eq!(kit.config.coordinator, "localhost:4433");
    assert_eq!(kit.config.server_name, "localhost");
    assert_eq!(kit.config.site, "site-b");

    // serve with the coordinator's kit, as `serve --kit kits/coordinator` does
    let ck = dir.path().join("kits").join("coordinator");
    let id = tls::load_identity(&ck.join("cert.pem"), &ck.join("key.pem")).unwrap();
    let ca = std::fs::read(ck.join("ca.pem")).unwrap();
    let verifier = tls::client_verifier(&ca, &ck.join("ca.pem")).unwrap();
    let ep = quinn::Endpoint::server(
        tls::server_config(&id, Duration::from_secs(5), Some(verifier), 1).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let reg = Registry::new(fedssl_shared::protocol::RunInfo::of(&fedssl_tests::tiny(
        &[],
    )));
    let admission = SiteAdmission {
        allow: vec![],
        revoked: None,
    };
    tokio::spawn(accept_loop(ep, reg.clone(), Arc::new(admission)));
    let ca_pem = String::from_utf8(ca).unwrap();
    let b = kit.credentials.clone();
    // without an allow-list a site without a shard gets the next id above the shards'
    assert_eq!(join(addr, &ca_pem, Some(&b), None).await, Ok(3));
    assert_eq!(reg.sites().get(&3).map(String::as_str), Some("site-b"));
    // the same site name from the other provisioning is refused
    let other = fedssl_client::kit::read_kit(&dir.path().join("other").join("site-a")).unwrap();
    let e = join(addr, &ca_pem, Some(&other.credentials), None)
        .await
        .unwrap_err();
    assert!(e.contains("does not trust the CA"), "{e}");
    // and a client of this kit does not trust a coordinator of the other provisioning
    let other_ca = std::fs::read_to_string(other.ca).unwrap();
    let e = join(addr, &other_ca, Some(&b), None).await.unwrap_err();
    assert!(
        e.contains("does not trust the coordinator") && e.contains("kit's ca.pem"),
        "{e}"
    );
}

/// A whole `serve --kit` run with three provisioned sites (in-process clients on their
/// synthetic shards): `rounds.jsonl` and `summary.json` name each client by its site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_run_with_kits_names_the_sites_in_its_records() {
    use fedssl_coordinator::run::job::{run_job, Job, Mode};
    let dir = tempfile::tempdir().unwrap();
    let kits = dir.path().join("kits");
    let sites = ["site-a", "site-b", "site-c"];
    let req = ProvisionRequest {
        sites: sites.iter().map(|s| s.to_string()).collect(),
        coordinator_names: vec!["localhost".into()],
        port: 4433,
        days: 3,
    };
    provision(&req, &kits).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = dir.path().join("run");
    let sc = fedssl_tests::tiny(&[
        "federation.rounds=1",
        "eval.enabled=false",
        "federation.sites=[\"site-a\", \"site-b\", \"site-c\"]",
    ]);
    let job = Job {
        scenario: sc,
        out: out.clone(),
        mode: Mode::Serve {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            identity: None,
            names: vec![],
            kit: Some(kits.join("coordinator")),
            revoked: None,
        },
        progress: false,
        resume: false,
    };
    let server = tokio::spawn(run_job(job));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for s in sites {
        let kit = fedssl_client::kit::read_kit(&kits.join(s)).unwrap();
        let pem = std::fs::read(&kit.ca).unwrap();
        clients.push(tokio::spawn(async move {
            let cfg = client_config_as(&pem, Some(&kit.credentials), Duration::from_secs(5))?;
            // the coordinator may still be binding its socket
            let mut tries = 0;
            let (_ep, conn) = loop {
                match fedssl_client::open(addr, "localhost", cfg.clone()).await {
                    Ok(c) => break c,
                    Err(_) if tries < 50 => tries += 1,
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let opts = fedssl_client::ClientOptions::new(
                kit.config.site.clone(),
                fedssl_client::DataSource::Whole { dir: None },
            );
            fedssl_client::run_session(conn, opts).await
        }));
    }
    let summary = tokio::time::timeout(Duration::from_secs(300), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.rounds_completed, 1);
    for c in clients {
        c.await.unwrap().unwrap();
    }
    let rounds = std::fs::read_to_string(out.join("rounds.jsonl")).unwrap();
    let r1: serde_json::Value = serde_json::from_str(rounds.lines().next().unwrap()).unwrap();
    assert_eq!(
        r1["sites"],
        serde_json::json!({"0": "site-a", "1": "site-b", "2": "site-c"})
    );
    assert_eq!(r1["clients"], serde_json::json!([0, 1, 2]));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["sites"], r1["sites"]);
}

/// One `serve` job (self-signed, no kit) of `sc` into `out` on `port` with three in-process
/// clients on their synthetic shards, which trust `pem` (read from `out/cert.pem` once the
/// coordinator wrote it when `None`); returns the rounds completed and the PEM trusted.
async fn serve_with_clients(
    sc: fedssl_shared::config::Scenario,
    out: &Path,
    port: u16,
    resume: bool,
    pem: Option<Vec<u8>>,
) -> (usize, Vec<u8>) {
    use fedssl_coordinator::run::job::{run_job, Job, Mode};
    let job = Job {
        scenario: sc,
        out: out.to_path_buf(),
        mode: Mode::Serve {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            identity: None,
            names: vec![],
            kit: None,
            revoked: None,
        },
        progress: false,
        resume,
    };
    let server = tokio::spawn(run_job(job));
    let pem = match pem {
        Some(p) => p,
        None => loop {
            match std::fs::read(out.join("cert.pem")) {
                Ok(p) if !p.is_empty() => break p,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        },
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for k in 0..3u32 {
        let cfg = fedssl_client::tls::client_config(&pem, Duration::from_secs(5)).unwrap();
        clients.push(tokio::spawn(async move {
            let mut tries = 0;
            let (_ep, conn) = loop {
                match fedssl_client::open(addr, "localhost", cfg.clone()).await {
                    Ok(c) => break c,
                    Err(_) if tries < 50 => tries += 1,
                    Err(e) => return Err(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let opts = fedssl_client::ClientOptions::new(
                format!("c{k}"),
                fedssl_client::DataSource::Shard { dir: None, k, n: 3 },
            );
            fedssl_client::run_session(conn, opts).await
        }));
    }
    let summary = tokio::time::timeout(Duration::from_secs(300), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for c in clients {
        c.await.unwrap().unwrap();
    }
    (summary.rounds_completed, pem)
}

/// `serve --resume` keeps the certificate the run wrote: the clients' copy of `cert.pem`
/// from before the restart still verifies, and the resumed run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_resume_keeps_its_certificate_so_the_sites_cert_pem_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let port = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let sc = |rounds: &str| {
        fedssl_tests::tiny(&[rounds, "eval.enabled=false", "partition={kind = \"iid\"}"])
    };
    let (done, pem) =
        serve_with_clients(sc("federation.rounds=1"), &out, port(), false, None).await;
    assert_eq!(done, 1);
    let (done, _) = serve_with_clients(
        sc("federation.rounds=2"),
        &out,
        port(),
        true,
        Some(pem.clone()),
    )
    .await;
    assert_eq!(done, 2);
    assert_eq!(std::fs::read(out.join("cert.pem")).unwrap(), pem);
}

/// A coordinator certificate that the CA signed for other names is said to be for other names
/// (the client checks it against `--server-name` or the kit's `server_name`), not "not signed".
#[tokio::test]
async fn a_coordinator_certificate_for_another_name_is_named_as_such() {
    let ca = Authority::new("test", 3).unwrap();
    let (addr, _reg) = server(&ca, &[], None).await;
    let site = creds(&ca.issue_site("site-a", 3).unwrap());
    let cfg = client_config_as(
        ca.cert_pem().as_bytes(),
        Some(&site),
        Duration::from_secs(5),
    )
    .unwrap();
    let e = match fedssl_client::open(addr, "coord.example", cfg).await {
        Ok(_) => panic!("a certificate for `localhost` was accepted for `coord.example`"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("is not valid for the name `coord.example`") && !e.contains("not signed"),
        "{e}"
    );
}

/// A site asking for the shard another connected site holds is refused naming the holder
/// (it would never free up), not told to retry.
#[tokio::test]
async fn a_site_asking_for_another_sites_shard_is_refused_naming_it() {
    let ca = Authority::new("test", 3).unwrap();
    let (addr, reg) = server(&ca, &[], None).await;
    let pem = ca.cert_pem();
    let a = creds(&ca.issue_site("site-a", 3).unwrap());
    let b = creds(&ca.issue_site("site-b", 3).unwrap());
    assert_eq!(join(addr, &pem, Some(&a), Some((0, 3))).await, Ok(0));
    let e = join(addr, &pem, Some(&b), Some((0, 3))).await.unwrap_err();
    assert_eq!(
        e,
        "shard 0 is held by site `site-a` in this run (each site trains on its own shard: check --shard)"
    );
    assert_eq!(join(addr, &pem, Some(&b), Some((1, 3))).await, Ok(1));
    assert_eq!(reg.ids(), [0, 1]);
}
