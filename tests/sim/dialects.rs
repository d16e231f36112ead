//! Writes as the sim's clients of each dialect make them: a frame of the
//! client protocol fed to the dialect (`outpost::dialect::Dialect`) over a
//! connection of the relay, the answer awaited, as the connection driver
//! (`conn::driver`) would, without a socket. The dialect is made by its
//! own handshake (`accept`) with the relay's context, as in a relay; each
//! write opens a connection of its own.
//!
//! The caller says what to write (a `LocalWrite` as the script drew it);
//! this maps it to the dialect's own shape (seeds 000 and 001 write
//! atomes, seed 003 one key's value, seed 002 a revision of a user's
//! configuration) and checks the answer the seed's client expects.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use outpost::auth::Auth;
use outpost::config::Anonymous;
use outpost::dialect::{
    atome_sync, config_sync, kv, native, sync, unified, ConnCtx, ConnSettings, Ctx, Dialect,
    Handled, Opening, Refused, Shared,
};
use outpost::engine::Engine;
use outpost::model::Op;
use outpost::rfc3339::Timestamp;
use outpost::store::LocalWrite;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The client protocols, as DESIGN.md numbers their seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `/ws`
    Native,
    /// Seed 000 `/ws/sync`.
    Sync,
    /// Seed 001 `/ws/atome-sync`.
    Atome,
    /// Seed 002 `/ws/config`.
    Config,
    /// Seed 003 `/v1/sync/{workspace}`.
    Kv,
    /// Seed 004 `/api/ws`.
    Unified,
}

pub const ALL: [Kind; 6] = [
    Kind::Native,
    Kind::Sync,
    Kind::Atome,
    Kind::Config,
    Kind::Kv,
    Kind::Unified,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native /ws",
            Kind::Sync => "seed 000 /ws/sync",
            Kind::Atome => "seed 001 /ws/atome-sync",
            Kind::Config => "seed 002 /ws/config",
            Kind::Kv => "seed 003 /v1/sync",
            Kind::Unified => "seed 004 /api/ws",
        }
    }
}

/// A relay's connection context (anonymous clients may write, as on a
/// loopback listener by default).
pub fn ctx(engine: &Arc<Engine>) -> Ctx {
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    Ctx::new(Shared {
        engine: engine.clone(),
        auth: Auth::new(None, Anonymous::Write),
        settings: ConnSettings {
            max_frame_bytes: 1 << 20,
            max_inflight: 256,
            max_subscriptions: 256,
            max_connections: 64,
            queue_depth: 1024,
            max_queue_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(60),
            forms: Default::default(),
        },
        shutdown,
        net: Default::default(),
        upstream: None,
    })
}

/// One connection of a dialect: the dialect and its accounting.
struct Conn<D> {
    dialect: D,
    _cc: ConnCtx,
}

fn connect<D: Dialect>(ctx: &Ctx, opening: Result<Opening<D>, Refused>) -> Result<Conn<D>, String> {
    let opening = opening.map_err(|(s, m)| format!("handshake refused: {s} {m}"))?;
    let cc = ConnCtx::new(ctx.clone(), opening.endpoint);
    let mut dialect = (opening.make)(&cc);
    // What the connection sends and follows at open is the driver's
    // business (a feed, seed 003's `init` read): not needed to write.
    drop(dialect.open(ctx.engine.clock().now_ms()));
    Ok(Conn { dialect, _cc: cc })
}

impl<D: Dialect> Conn<D> {
    /// A client frame and everything it is answered: at once, then (a
    /// write) once committed.
    async fn send(&mut self, frame: Value) -> Result<Vec<Value>, String> {
        let now_ms = self._cc.state.engine.clock().now_ms();
        let h = self.dialect.on_text(&frame.to_string(), now_ms);
        let out = self.answer(h, &frame).await?;
        out.iter()
            .map(|f| serde_json::from_str(f).map_err(|e| format!("{frame}: answered {f} ({e})")))
            .collect()
    }
}

impl<D: Dialect> Conn<D> {
    /// Carry out what the dialect asked for as the driver would: publish
    /// an event, make an engine call and feed its result back (whose own
    /// answer, or next call, follows).
    async fn answer(&mut self, h: Handled, frame: &Value) -> Result<Vec<String>, String> {
        let engine = self._cc.state.engine.clone();
        let conn = self._cc.id;
        let mut out: Vec<String> = h.now;
        if let Some(p) = h.publish {
            engine.publish(&p.space, &p.topic, p.payload, &p.actor, Some(conn));
        }
        if let Some(c) = h.call {
            let (token, call) = *c;
            let reply =
                tokio::time::timeout(Duration::from_secs(20), call.make(&engine, Some(conn)))
                    .await
                    .map_err(|_| format!("{frame}: no answer in 20 s"))?;
            let then = self.dialect.reply(token, reply, engine.clock().now_ms());
            out.extend(Box::pin(self.answer(then, frame)).await?);
        }
        Ok(out)
    }
}

fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a dialect write did: the engine writes it stands for (compared
/// with the changes the relay logged for it), or a refusal the protocol
/// allows (seed 002's compare-and-swap lost to a revision that arrived
/// from a peer between the client's check and its upload).
pub enum Wrote {
    /// The writes expected in the log (None: not checked change by
    /// change, seed 002's three records), and whether the relay's clock
    /// stamped them (no client edit time).
    Stored {
        expect: Option<Vec<LocalWrite>>,
        clocked: bool,
        /// The native ack's seqs (checked against the log).
        seqs: Vec<u64>,
    },
    Refused(String),
}

/// Write `w` (collection `c`) into `space` of the relay through dialect
/// `kind`, as its client would; `n` tells seed 002's clients apart.
pub async fn write(
    ctx: &Ctx,
    kind: Kind,
    space: &str,
    w: &LocalWrite,
    n: u64,
) -> Result<Wrote, String> {
    let h = axum::http::HeaderMap::new();
    let fields: Map<String, Value> = w.fields.clone().into_iter().collect();
    let client_ms = w.client_us.map(|us| us / 1000);
    let stored = |expect: Vec<LocalWrite>, clocked: bool| Wrote::Stored {
        expect: Some(expect),
        clocked,
        seqs: vec![],
    };
    match kind {
        Kind::Native => {
            let mut c = connect(ctx, native::accept(ctx, &h, &query(&[])))?;
            let op = match w.op {
                Op::Put => "put",
                Op::Patch => "patch",
                Op::Delete => "delete",
            };
            let mut change =
                json!({"collection": w.collection, "id": w.id, "op": op, "fields": fields});
            if let Some(ms) = client_ms {
                change["ts"] = json!(ms);
            }
            let got = c
                .send(json!({"type": "push", "rid": 7, "space": space, "changes": [change]}))
                .await?;
            let seq = match got.as_slice() {
                [a] if a["type"] == "ack"
                    && a["rid"] == 7
                    && a["results"][0]["duplicate"] == false =>
                {
                    a["results"][0]["seq"].as_u64()
                }
                _ => None,
            };
            let seq = seq.ok_or_else(|| format!("native push answered {got:?}"))?;
            let mut expect = w.clone();
            // Millisecond edit times on this wire.
            expect.client_us = client_ms.map(|ms| ms * 1000);
            Ok(Wrote::Stored {
                expect: Some(vec![expect]),
                clocked: w.client_us.is_none(),
                seqs: vec![seq],
            })
        }
        Kind::Sync | Kind::Atome => {
            // Seeds 000 and 001 write atomes: a create stores the whole
            // atome (a put), an alteration patches it, a delete tombstones
            // it; the relay's clock stamps them; only a failure is answered.
            let atome = || {
                let mut a = fields.clone();
                a.insert("id".into(), json!(w.id));
                Value::Object(a)
            };
            let frame = match (kind, w.op) {
                (Kind::Sync, Op::Put) => json!({"type": "atome-sync", "requestId": 1,
                    "payload": {"operation": "create", "atome": atome()}}),
                (Kind::Sync, Op::Patch) => json!({"type": "event", "requestId": 1,
                    "eventType": "atome:altered", "payload": {"id": w.id, "alteration": fields}}),
                (Kind::Sync, Op::Delete) => json!({"type": "event", "requestId": 1,
                    "eventType": "atome:deleted", "payload": {"id": w.id}}),
                (_, Op::Put) => json!({"type": "atome:created", "requestId": 1, "atome": atome()}),
                (_, Op::Patch) => json!({"type": "atome:altered", "requestId": 1,
                    "atomeId": w.id, "alteration": fields}),
                (_, Op::Delete) => {
                    json!({"type": "atome:deleted", "requestId": 1, "atomeId": w.id})
                }
            };
            let got = if kind == Kind::Sync {
                let q = query(&[("space", space)]);
                connect(ctx, sync::accept(ctx, &h, &q))?.send(frame).await?
            } else {
                let q = query(&[("space", space), ("clientId", "sim")]);
                connect(ctx, atome_sync::accept(ctx, &h, &q))?
                    .send(frame)
                    .await?
            };
            if !got.is_empty() {
                return Err(format!("{} write answered {got:?}", kind.name()));
            }
            let mut expect = w.clone();
            expect.collection = outpost::dialect::atome::COLLECTION.into();
            expect.client_us = None;
            if w.op == Op::Put {
                expect.fields.retain(|_, v| !v.is_null());
            }
            Ok(stored(vec![expect], true))
        }
        Kind::Kv => {
            // One key's value; null deletes it. Answered only on failure.
            let value = match w.op {
                Op::Delete => Value::Null,
                _ => w.fields.values().next().cloned().unwrap_or(json!(0)),
            };
            let mut payload = json!({"key": w.id, "value": value});
            if let Some(us) = w.client_us {
                payload["timestamp"] = json!(us);
            }
            let mut c = connect(ctx, kv::accept(ctx, space.to_string(), &h, &query(&[])))?;
            let got = c.send(json!({"type": "op", "payload": payload})).await?;
            if !got.is_empty() {
                return Err(format!("seed 003 op answered {got:?}"));
            }
            let expect = kv::op_write(w.id.clone(), value, w.client_us);
            Ok(stored(vec![expect], w.client_us.is_none()))
        }
        Kind::Unified => {
            let q = query(&[("space", space), ("client_id", "sim")]);
            let mut c = connect(
                ctx,
                unified::accept(unified::proto::Endpoint::Unified, ctx, &h, &q),
            )?;
            // A patch with an edit time goes field by field (`push_fields`,
            // its time on each field); the rest as entity pushes (an update
            // needs some data: an empty patch gets one field).
            if let (Op::Patch, Some(ms), false) = (w.op, client_ms, fields.is_empty()) {
                let ts = Timestamp::from_unix_ms(ms).to_string();
                let list: Vec<Value> = fields
                    .iter()
                    .map(|(f, v)| json!({"field": f, "value": v, "action": "update", "timestamp": ts}))
                    .collect();
                let got = c
                    .send(json!({"type": "push_fields", "entity": w.collection,
                                 "entity_id": w.id, "fields": list}))
                    .await?;
                let ok = got.first().is_some_and(|a| {
                    a["type"] == "field_push_ack" && a["entity_id"] == json!(w.id)
                });
                // The other frames: a field_conflict per field that lost to
                // a newer value (recorded, reported, kept in history).
                if !ok || got[1..].iter().any(|f| f["type"] != "field_conflict") {
                    return Err(format!("seed 004 push_fields answered {got:?}"));
                }
                let mut expect = w.clone();
                expect.client_us = Some(ms * 1000);
                return Ok(stored(vec![expect], false));
            }
            let mut expect = w.clone();
            expect.client_us = None;
            let (action, data) = match w.op {
                Op::Put => ("create", Value::Object(fields)),
                Op::Patch => {
                    if expect.fields.is_empty() {
                        expect.fields.insert("a".into(), json!(0));
                    }
                    let data: Map<String, Value> = expect.fields.clone().into_iter().collect();
                    ("update", Value::Object(data))
                }
                Op::Delete => ("delete", Value::Null),
            };
            let mut frame = json!({"type": "push", "entity": w.collection, "entity_id": w.id,
                                   "action": action});
            if !data.is_null() {
                frame["data"] = data;
            }
            let got = c.send(frame).await?;
            match got.as_slice() {
                [a] if a["type"] == "push_ack"
                    && a["entity_id"] == json!(w.id)
                    && a["version"].as_u64().is_some() => {}
                _ => return Err(format!("seed 004 push answered {got:?}")),
            }
            Ok(stored(vec![expect], true))
        }
        Kind::Config => {
            // A device of user u<n> uploads the next revision of the
            // user's configuration (an opaque blob and its hash): it asks
            // the relay's version first, then uploads on top of it.
            let user = format!("u{n}");
            let q = query(&[("space", space), ("userId", &user), ("deviceId", "sim")]);
            let mut c = connect(ctx, config_sync::accept(ctx, &h, &q))?;
            let got = c
                .send(json!({"type": "check-status-request", "userId": user,
                             "deviceId": "sim", "localVersion": 0}))
                .await?;
            let remote = match got.as_slice() {
                [a] if a["type"] == "check-status-response" => a["remoteVersion"].as_u64(),
                _ => None,
            };
            let remote = remote.ok_or_else(|| format!("seed 002 check answered {got:?}"))?;
            let hash = format!("{:064x}", w.fields.len() as u64 * 7919 + remote);
            let blob = format!("{}", json!(fields));
            let got = c
                .send(
                    json!({"type": "upload-config-request", "userId": user, "deviceId": "sim",
                             "version": remote + 1, "previousVersion": remote,
                             "encryptedConfig": STANDARD.encode(&blob), "configHash": hash,
                             "delta": {"added": {}, "modified": fields, "deleted": []}}),
                )
                .await?;
            match got.first() {
                Some(a) if a["type"] == "upload-config-response" && a["success"] == true => {
                    if a["newVersion"] != json!(remote + 1) {
                        return Err(format!("seed 002 upload answered {got:?}"));
                    }
                    Ok(Wrote::Stored {
                        expect: None,
                        clocked: true,
                        seqs: vec![],
                    })
                }
                Some(a)
                    if a["type"] == "upload-config-response"
                        && a["error"] == "version-conflict" =>
                {
                    Ok(Wrote::Refused(format!("{got:?}")))
                }
                _ => Err(format!("seed 002 upload answered {got:?}")),
            }
        }
    }
}

/// The collections a seed-002 upload writes: the document, its history
/// entry, the device record.
pub const CONFIG_COLLECTIONS: [&str; 3] = [
    config_sync::DOCS,
    config_sync::HISTORY,
    config_sync::DEVICES,
];
