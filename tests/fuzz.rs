//! Property tests (fuzzing) of every parser that takes outside input: each
//! dialect's JSON frames, the MessagePack replication frames, the config
//! file, JWTs, RFC 3339 stamps and gzip frames. Whatever the input, a
//! parser returns (an error with a message, or a value) and never panics;
//! inputs that claim huge sizes are refused without allocating them. The
//! native dialect's frames are parsed inside its connection, so they are
//! fuzzed through a real WebSocket: the relay answers every frame and the
//! connection keeps serving.
//!
//! Cases per property: proptest's default (256) or `PROPTEST_CASES`
//! (e.g. `PROPTEST_CASES=100000 cargo test --release --test fuzz`), see
//! docs/reliability.md. The whole file runs in seconds in CI.

mod common;

use common::*;
use outpost::auth::{Auth, Scope};
use outpost::config::{Anonymous, Config};
use outpost::dialect::unified::proto::Endpoint;
use outpost::replicate::frame::{self, Frame, MAX_FRAME_BYTES};
use outpost::rfc3339::Timestamp;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{json, Map, Value};

/// Keys and words of the client protocols, so generated JSON often gets
/// past the first checks and reaches the deeper ones.
const KEYS: &[&str] = &[
    "type",
    "rid",
    "requestId",
    "space",
    "spaces",
    "changes",
    "collection",
    "collections",
    "id",
    "op",
    "fields",
    "since",
    "topic",
    "payload",
    "token",
    "version",
    "atome",
    "atomeId",
    "kind",
    "after",
    "limit",
    "clientId",
    "deviceId",
    "deviceName",
    "userId",
    "timestamp",
    "metadata",
    "operation",
    "changeType",
    "changedPaths",
    "alteration",
    "eventType",
    "data",
    "key",
    "value",
    "entity",
    "entityId",
    "field",
    "ts",
    "wid",
    "expect",
    "doc",
    "config",
];
const WORDS: &[&str] = &[
    "push",
    "subscribe",
    "unsubscribe",
    "get",
    "ping",
    "pong",
    "hello",
    "publish",
    "event",
    "sync_request",
    "push_fields",
    "register",
    "validate_form",
    "auth",
    "atome-sync",
    "upload-config-request",
    "download-config-request",
    "check-status-request",
    "resolve-conflict-request",
    "put",
    "patch",
    "delete",
    "created",
    "updated",
    "deleted",
    "altered",
    "s",
    "c",
    "x",
    "",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(|w| json!(w)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A JSON object frame with a protocol `type`/`op` word, or garbage text.
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            prop::sample::select(&["type", "op", "kind", "operation"][..]),
            prop::sample::select(WORDS),
            prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8),
        )
            .prop_map(|(tk, t, rest)| {
                let mut m = Map::new();
                m.insert(tk.to_string(), json!(t));
                for (k, v) in rest {
                    m.insert(k.to_string(), v);
                }
                Value::Object(m).to_string()
            }),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => ".{0,64}",
        // Truncated or spliced JSON.
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let s = v.to_string();
            let cut = i.index(s.len() + 1);
            s.get(..cut).unwrap_or(&s).to_string()
        }),
    ]
}

fn runner() -> TestRunner {
    // PropConfig::default() honours PROPTEST_CASES.
    TestRunner::new(PropConfig::default())
}

#[test]
fn dialect_json_parsers_never_panic() {
    runner()
        .run(&frame_text(), |text| {
            let _ = outpost::dialect::kv::parse_client(&text);
            let _ = outpost::dialect::sync::parse(&text);
            let _ = outpost::dialect::atome_sync::parse(&text);
            let _ = outpost::dialect::atome::envelope(&text, "invalid");
            let _ = outpost::dialect::config_sync::parse(&text);
            for e in [Endpoint::Unified, Endpoint::Entity, Endpoint::Field] {
                let _ = outpost::dialect::unified::proto::parse(&text, e);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn dialect_json_errors_say_what_is_wrong() {
    // Not JSON at all: every parser refuses it with a message.
    for text in ["", "{", "nul", "[1,", "\u{0}", "{\"type\":"] {
        assert!(
            outpost::dialect::kv::parse_client(text).is_err(),
            "{text:?}"
        );
        let (_, r) = outpost::dialect::sync::parse(text);
        assert!(r.is_err(), "{text:?}");
        let (_, r) = outpost::dialect::atome_sync::parse(text);
        assert!(r.is_err(), "{text:?}");
        let (_, r) = outpost::dialect::config_sync::parse(text);
        assert!(r.is_err(), "{text:?}");
        for e in [Endpoint::Unified, Endpoint::Entity, Endpoint::Field] {
            assert!(
                outpost::dialect::unified::proto::parse(text, e).is_err(),
                "{text:?}"
            );
        }
        let e = outpost::dialect::atome::envelope(text, "invalid").unwrap_err();
        assert!(!e.message.is_empty());
    }
}

fn valid_frames() -> Vec<Frame> {
    use outpost::model::{Change, NodeId, Op, Stamp};
    let change = Change {
        space: "s".into(),
        collection: "c".into(),
        id: "e1".into(),
        op: Op::Patch,
        fields: [("a".to_string(), json!({"x": [1, 2]}))].into(),
        stamp: Stamp {
            ms: 1_700_000_000_000,
            counter: 3,
            node: NodeId(9),
        },
        origin: NodeId(9),
        seq: 4,
        actor: "u".into(),
    };
    vec![
        Frame::Hello {
            proto: 1,
            node: NodeId(1),
            vv: [(NodeId(2), 5)].into(),
            software: "outpost".into(),
        },
        Frame::Batch {
            id: 7,
            changes: vec![change.clone(), change],
            covers: vec![(NodeId(9), 1, 4)],
        },
        Frame::Ack { id: 3 },
        Frame::SnapshotDone {
            id: 1,
            vv: [(NodeId(2), 5)].into(),
        },
        Frame::Bye { reason: "x".into() },
    ]
}

#[test]
fn replication_frames_never_panic() {
    let frames: Vec<Vec<u8>> = valid_frames()
        .iter()
        .map(|f| frame::encode(f).unwrap())
        .collect();
    for (f, bytes) in valid_frames().iter().zip(&frames) {
        assert_eq!(&frame::decode(bytes).unwrap(), f);
    }
    let mutated = (
        prop::sample::select(frames),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut b, flips, cut)| {
            for (i, v) in flips {
                let i = i.index(b.len());
                b[i] = v;
            }
            b.truncate(cut.index(b.len() + 1).max(1));
            b
        });
    let input = prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated];
    runner()
        .run(&input, |bytes| {
            let _ = frame::decode(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn replication_frames_claiming_huge_sizes_are_refused_cheaply() {
    // MessagePack headers that announce 4 G elements or bytes, with nothing
    // behind them: refused at once, nothing that size allocated.
    let started = std::time::Instant::now();
    for bytes in [
        &[
            0x81, 0xa5, b'b', b'a', b't', b'c', b'h', 0xdf, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[
            0x81, 0xa5, b'h', b'e', b'l', b'l', b'o', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[
            0x81, 0xa3, b'b', b'y', b'e', 0x81, 0xa6, b'r', b'e', b'a', b's', b'o', b'n', 0xdb,
            0xff, 0xff, 0xff, 0xff,
        ][..],
        &[
            0x81, 0xa5, b'p', b'r', b'o', b'o', b'f', 0x82, 0xa5, b'p', b'r', b'o', b't', b'o', 1,
            0xa5, b'p', b'r', b'o', b'o', b'f', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ][..],
        &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        assert!(frame::decode(bytes).is_err(), "{bytes:?}");
    }
    assert!(frame::decode(&vec![0; MAX_FRAME_BYTES + 1]).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn config_files_never_panic() {
    let shipped = include_str!("../config/outpost.toml");
    let lines: Vec<String> = shipped.lines().map(str::to_string).collect();
    // The shipped file with some lines uncommented, dropped or garbled.
    let edited = (prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            0..3u8,
            prop_oneof![
                Just(String::new()),
                Just("\"".to_string()),
                Just("-1".to_string()),
                Just("18446744073709551616".to_string()),
                Just("[[".to_string()),
                ".{0,12}",
            ],
        ),
        1..10,
    ),)
        .prop_map(move |(edits,)| {
            let mut l = lines.clone();
            for (i, how, junk) in edits {
                let i = i.index(l.len());
                match how {
                    0 => l[i] = l[i].trim_start_matches("# ").to_string(),
                    1 => l[i] = format!("{}{junk}", l[i]),
                    _ => {
                        if let Some((k, _)) = l[i].split_once('=') {
                            l[i] = format!("{k}= {junk}");
                        }
                    }
                }
            }
            l.join("\n")
        });
    let input = prop_oneof![1 => ".{0,200}", 4 => edited];
    runner()
        .run(&input, |text| {
            if let Ok(c) = Config::parse(&text, "fuzz.toml") {
                let _ = c.warnings();
                if let Err(e) = c.validate() {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn jwts_never_panic_and_only_the_real_one_verifies() {
    let auth = Auth::new(Some(SECRET.as_bytes()), Anonymous::None);
    let now = 1_800_000_000;
    let good = auth
        .mint("user", Scope::Write, Some(vec!["s".into()]), 3600, now)
        .unwrap();
    assert!(auth.verify(&good, now).is_ok());
    let b64 = |v: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    };
    let forged = (json_value(), json_value(), ".{0,40}").prop_map(move |(h, p, sig)| {
        format!(
            "{}.{}.{}",
            b64(h.to_string().as_bytes()),
            b64(p.to_string().as_bytes()),
            sig
        )
    });
    let g = good.clone();
    let tampered = (any::<prop::sample::Index>(), any::<char>()).prop_map(move |(i, ch)| {
        let mut chars: Vec<char> = g.chars().collect();
        let i = i.index(chars.len());
        chars[i] = ch;
        chars.into_iter().collect::<String>()
    });
    let input = prop_oneof![".{0,120}", forged, tampered];
    runner()
        .run(&input, |token| {
            match auth.verify(&token, now) {
                Ok(_) => {
                    // Only the minted token, or one that decodes to the same
                    // bytes (base64 padding bits), may verify.
                    prop_assert_eq!(token.split('.').count(), 3);
                    prop_assert_eq!(
                        &token[..token.rfind('.').unwrap()],
                        &good[..good.rfind('.').unwrap()]
                    );
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            let _ = auth.admit(Some(&token), now);
            Ok(())
        })
        .unwrap();
}

#[test]
fn rfc3339_stamps_never_panic_and_round_trip() {
    let texts = prop_oneof![
        ".{0,40}",
        "[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}[Tt ][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\\.[0-9]{0,12})?(Z|z|[+-][0-9]{2}:[0-9]{2})",
    ];
    runner()
        .run(&texts, |s| {
            if let Ok(t) = Timestamp::parse(&s) {
                let _ = t.unix_ms();
                let again = Timestamp::parse(&t.to_string());
                prop_assert_eq!(again.map(|a| a.unix_ms()), Ok(t.unix_ms()));
            }
            Ok(())
        })
        .unwrap();
    runner()
        .run(&(0u64..=253_402_300_799_999), |ms| {
            let t = Timestamp::from_unix_ms(ms);
            prop_assert_eq!(
                Timestamp::parse(&t.to_string()).unwrap().unix_ms(),
                Some(ms)
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn gzip_frames_never_panic_and_stay_bounded() {
    use outpost::dialect::gzip::{gunzip_text, gzip, GzipError};
    let valid = ".{0,300}".prop_map(|s: String| gzip(&s));
    let mutated =
        (valid.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, i, v)| {
            let i = i.index(b.len());
            b[i] = v;
            b
        });
    let input = prop_oneof![prop::collection::vec(any::<u8>(), 0..128), valid, mutated];
    runner()
        .run(&input, |bytes| {
            if let Err(e) = gunzip_text(&bytes, 1024) {
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap();
    // A bomb: 64 MiB of zeros in ~64 KiB, against a 1 MiB limit.
    let bomb = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    assert!(bomb.len() < 1 << 20);
    assert_eq!(
        gunzip_text(&bomb, 1 << 20),
        Err(GzipError::TooLarge(1 << 20))
    );
}

fn prop_assert_answered(answers: usize, text: &str) {
    assert!(answers >= 1, "no answer to {text:?}");
}

/// The native dialect parses its frames inside the connection: fuzz it over
/// a real WebSocket. Every frame gets an answer, none closes the
/// connection, and it still serves a real write at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_frames_over_a_socket_get_answers_and_the_connection_survives() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut c = Client::native(relay.addr).await;
    let cases = PropConfig::default().cases.min(2048);
    let mut runner = TestRunner::new(PropConfig::default());
    let strategy = frame_text();
    for n in 0..cases {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        c.send_raw(tokio_tungstenite::tungstenite::Message::Text(
            text.clone().into(),
        ))
        .await;
        // A ping after each frame: everything before the pong answers it.
        c.send(json!({"type": "ping", "rid": format!("p{n}")}))
            .await;
        let mut answers = 0;
        loop {
            let v = c.recv().await;
            if v["type"] == "pong" && v["rid"] == format!("p{n}") {
                break;
            }
            answers += 1;
        }
        // Anything that is not a JSON object is answered with an error
        // (an object may be a valid request that answers nothing, such as
        // a publish).
        if !serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()) {
            prop_assert_answered(answers, &text);
        }
    }
    let ack = c.put("s", "after-fuzz", json!({"ok": true})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    relay.shutdown().await.unwrap();
}
