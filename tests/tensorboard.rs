//! TensorBoard event files of a real tiny `simulate` run (`[logging] tensorboard = true`),
//! read back by readers that share no code with the writer: a minimal record and protobuf
//! decoder written here (CRC-32C computed bit by bit, Castagnoli polynomial), and, where
//! python's `tensorboard` package is importable, its `EventFileLoader`.

// A test file: a failed unwrap is a failed test, in helpers as in `#[test]` functions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedssl_coordinator::run::job::{run_job, Job, Mode};
use fedssl_tests::tiny;
use serde_json::Value;

/// CRC-32C, bitwise (reflected polynomial 0x82F63B78), independent of the writer's crate.
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c_bitwise(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// The records of a TFRecord file, every CRC checked.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc_len = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().unwrap());
        assert_eq!(crc_len, masked(len_bytes), "length CRC of record at {i}");
        let data = &bytes[i + 12..i + 12 + len];
        let crc = u32::from_le_bytes(bytes[i + 12 + len..i + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked(data), "data CRC of record at {i}");
        out.push(data.to_vec());
        i += 16 + len;
    }
    out
}

/// One protobuf field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                i += 8;
                Field::Fixed64(b[i - 8..i].try_into().unwrap())
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                i += n;
                Field::Bytes(&b[i - n..i])
            }
            5 => {
                i += 4;
                Field::Fixed32(b[i - 4..i].try_into().unwrap())
            }
            t => panic!("wire type {t}"),
        };
        out.push((key >> 3, f));
    }
    out
}

/// A decoded `Event`: wall time, step, file_version, and the summary's `(tag, value)`s.
#[derive(Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    values: Vec<(String, f32)>,
}

fn event(b: &[u8]) -> Event {
    let mut e = Event::default();
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Fixed64(x)) => e.wall_time = f64::from_le_bytes(x),
            (2, Field::Varint(x)) => e.step = x as i64,
            (3, Field::Bytes(s)) => e.file_version = Some(String::from_utf8(s.to_vec()).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (n, f) in fields(summary) {
                    let (1, Field::Bytes(value)) = (n, f) else {
                        panic!("Summary field {n}")
                    };
                    let (mut tag, mut v) = (String::new(), f32::NAN);
                    for (n, f) in fields(value) {
                        match (n, f) {
                            (1, Field::Bytes(s)) => tag = String::from_utf8(s.to_vec()).unwrap(),
                            (2, Field::Fixed32(x)) => v = f32::from_le_bytes(x),
                            (n, _) => panic!("Summary.Value field {n}"),
                        }
                    }
                    e.values.push((tag, v));
                }
            }
            (n, _) => panic!("Event field {n}"),
        }
    }
    e
}

/// Every `(tag, step) → value` of the event files in `dir`; each file starts with
/// `file_version = "brain.Event:2"`.
fn scalars(dir: &Path) -> (BTreeMap<(String, i64), f32>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for f in &files {
        assert!(f
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("events.out.tfevents."));
        let recs = records(&std::fs::read(f).unwrap());
        let first = event(&recs[0]);
        assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
        assert!(first.wall_time > 1.0e9, "wall_time is Unix seconds");
        for r in &recs[1..] {
            let e = event(r);
            assert!(e.wall_time >= first.wall_time);
            for (tag, v) in e.values {
                out.insert((tag, e.step), v);
            }
        }
    }
    (out, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensorboard_files_hold_the_rounds_and_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sc = tiny(&["logging.tensorboard=true", "eval.knn_every=1"]);
    run_job(Job {
        scenario: sc,
        out: out.clone(),
        mode: Mode::Simulate,
        progress: false,
        resume: false,
    })
    .await
    .unwrap();
    let (got, files) = scalars(&out.join("tb"));
    assert_eq!(files.len(), 2, "one file of rounds, one of the evaluation");
    let rounds: Vec<Value> = std::fs::read_to_string(out.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rounds.len(), 2);
    let mut expected = BTreeMap::new();
    for r in &rounds {
        let step = r["round"].as_i64().unwrap();
        let mut put = |tag: String, v: f64| expected.insert((tag, step), v as f32);
        put("loss/mean".into(), r["mean_loss"].as_f64().unwrap());
        for (id, l) in r["loss"].as_object().unwrap() {
            put(format!("loss/client_{id}"), l.as_f64().unwrap());
        }
        for (id, a) in r["accuracy"].as_object().unwrap() {
            put(format!("accuracy/client_{id}"), a.as_f64().unwrap());
        }
        put("knn/top1".into(), r["knn_top1"].as_f64().unwrap());
        put("bytes/sent".into(), r["bytes_sent"].as_f64().unwrap());
        put(
            "bytes/received".into(),
            r["bytes_received"].as_f64().unwrap(),
        );
        put("round/seconds".into(), r["seconds"].as_f64().unwrap());
        put("round/lr".into(), r["lr"].as_f64().unwrap());
        put(
            "clients/aggregated".into(),
            r["clients"].as_array().unwrap().len() as f64,
        );
        put(
            "clients/dropped".into(),
            r["dropped"].as_array().unwrap().len() as f64,
        );
    }
    let eval: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    expected.insert(
        ("eval/linear_top1".into(), 2),
        eval["linear"]["top1"].as_f64().unwrap() as f32,
    );
    expected.insert(
        ("eval/linear_top5".into(), 2),
        eval["linear"]["top5"].as_f64().unwrap() as f32,
    );
    expected.insert(
        ("eval/random_init_linear_top1".into(), 2),
        eval["random_init"]["linear"]["top1"].as_f64().unwrap() as f32,
    );
    if eval.get("mlp").is_some() {
        expected.insert(
            ("eval/mlp_top1".into(), 2),
            eval["mlp"]["top1"].as_f64().unwrap() as f32,
        );
        expected.insert(
            ("eval/mlp_top5".into(), 2),
            eval["mlp"]["top5"].as_f64().unwrap() as f32,
        );
        expected.insert(
            ("eval/random_init_mlp_top1".into(), 2),
            eval["random_init"]["mlp"]["top1"].as_f64().unwrap() as f32,
        );
    }
    assert_eq!(got, expected);
    assert!(got.contains_key(&("loss/client_0".to_string(), 1)));
    python_reader_agrees(&out.join("tb"), &got);
}

/// Where `FEDSSL_PYTHON` (or `python3`) imports `tensorboard`, its `EventFileLoader` reads the
/// same `(tag, step, value)`s; skipped with a printed reason otherwise.
fn python_reader_agrees(dir: &Path, expected: &BTreeMap<(String, i64), f32>) {
    let python = std::env::var("FEDSSL_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import glob, json, sys
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util
out = []
for f in sorted(glob.glob(sys.argv[1] + "/events.out.tfevents.*")):
    for ev in EventFileLoader(f).Load():
        for v in ev.summary.value:
            x = v.simple_value if v.HasField("simple_value") else float(tensor_util.make_ndarray(v.tensor))
            out.append([v.tag, ev.step, x])
print(json.dumps(out))
"#;
    let res = std::process::Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output();
    let res = match res {
        Ok(r) if r.status.success() => r,
        Ok(r) => {
            println!(
                "skipped the python reader: {python} cannot read with tensorboard: {}",
                String::from_utf8_lossy(&r.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            return;
        }
        Err(e) => {
            println!("skipped the python reader: cannot run {python}: {e}");
            return;
        }
    };
    let rows: Vec<(String, i64, f64)> = serde_json::from_slice(&res.stdout).unwrap();
    let got: BTreeMap<(String, i64), f32> = rows
        .into_iter()
        .map(|(t, s, v)| ((t, s), v as f32))
        .collect();
    assert_eq!(&got, expected, "python tensorboard's reading");
    println!("python tensorboard read {} scalars, all equal", got.len());
}
