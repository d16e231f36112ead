//! Seed 004's unified multiplexed protocol on `/api/ws`, and its two legacy
//! subsets `/api/sync/ws` (entity messages) and `/api/field-sync/ws` (field
//! messages). Message shapes, mapping and rendering are in `proto`; this
//! file is [`Unified`], the protocol the connection driver (`conn::run`)
//! runs, and `events` the SSE feed of the HTTP API. Documented in
//! docs/protocol.md.

pub mod events;
pub mod http;
pub mod proto;

use super::{
    admit, Call, Dialect, Failed, Follow, Handled, Opening, Query, Read, Refused, Reply, Rows,
    Since,
};
use crate::auth::Grant;
use crate::dialect::Ctx;
use crate::engine::{Committed, EngineError, ErrorClass, Filter};
use crate::metrics::Metrics;
use crate::store::{Outcome, StoredEntity};
use axum::extract::ws::{Message, Utf8Bytes};
use axum::http::{HeaderMap, StatusCode};
use proto::{code, Endpoint, Refusal, UnifiedMessage};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Catch-up page size for `sync`.
const PAGE: usize = 256;

/// The handshake of the three endpoints: a bad or missing token is 401, a
/// bad `?space=` 400.
pub fn accept(
    endpoint: Endpoint,
    state: &Ctx,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Opening<Unified>, Refused> {
    let grant = admit(state, headers, query)?;
    let client = Client::of(endpoint, grant, query)?;
    let (forms, max_frame_bytes) = (state.settings.forms.clone(), state.settings.max_frame_bytes);
    let metrics = state.engine.metrics.clone();
    Ok(Opening::new(endpoint.path(), move |conn| {
        Unified::new(client, conn.id, forms, max_frame_bytes, metrics)
    }))
}

/// What a connection's handshake settled.
pub struct Client {
    pub endpoint: Endpoint,
    pub grant: Grant,
    pub space: String,
    /// The name the client gave itself (None: the relay names it after the
    /// connection): a ChangeLog of its writes carries it, and it is their
    /// actor when the client is anonymous.
    pub client_id: Option<String>,
    /// Whether large frames go out gzipped from the start.
    pub compress: bool,
}

impl Client {
    /// The handshake's query: `?space=` (default `default`; a bad name is
    /// 400), `?client_id=` (ignored unless a valid name), `?compression=`.
    pub fn of(
        endpoint: Endpoint,
        grant: Grant,
        query: &HashMap<String, String>,
    ) -> Result<Client, Refused> {
        let space = crate::dialect::space_of(query)?;
        let client_id = query
            .get("client_id")
            .filter(|c| crate::engine::validate_name("client_id", c).is_ok())
            .cloned();
        // Whether large frames go out gzipped: RHTMX's clients on the two
        // backward-compatible endpoints always decompress binary frames, so
        // there the relay compresses as the real server does; on `/api/ws`
        // only for a client that asks (or that compresses itself).
        let compress = match query.get("compression").map(String::as_str) {
            Some("gzip") => true,
            Some("off") | Some("none") => false,
            _ => endpoint != Endpoint::Unified,
        };
        Ok(Client {
            endpoint,
            grant,
            space,
            client_id,
            compress,
        })
    }
}

/// What a feed delivers: entity changes or field changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Entity,
    Field,
}

/// One connection of the three endpoints. Each `subscribe` adds a feed for
/// the entity types not yet subscribed, live from now (a type added later
/// never replays its past); a feed dropped for lagging resumes from the log
/// where it stopped, so the client misses nothing and needs no resync
/// message. Pushes are pipelined and answered in request order once
/// durable; `sync` is a paged read.
pub struct Unified {
    metrics: Arc<Metrics>,
    forms: Arc<crate::schema::SchemaSet>,
    max_frame_bytes: usize,
    grant: Grant,
    endpoint: Endpoint,
    space: String,
    client_id: String,
    /// Send frames of `gzip::THRESHOLD` bytes or more gzipped (binary).
    compress: bool,
    /// Feed key -> what it delivers, of which entity types.
    feeds: HashMap<u64, (Kind, HashSet<String>)>,
    next_key: u64,
    /// Pushes in flight (each a [`Call::Write`]), by call token.
    pushes: HashMap<u64, Pushed>,
    next_token: u64,
}

/// What a push's result answers.
enum Pushed {
    Entity {
        entity: String,
        entity_id: String,
    },
    Fields {
        entity: String,
        entity_id: String,
        times: std::collections::BTreeMap<String, crate::rfc3339::Timestamp>,
    },
}

/// Engine errors in seed 004: the `error` code (sockets) and the HTTP
/// status (the HTTP API) of each class (its column of `dialect::errors`).
pub fn wire(class: ErrorClass) -> (&'static str, StatusCode) {
    super::errors::wire(class).unified
}

/// An engine error as an `error` frame: its code from [`wire`], its
/// message in the seed's terms (one entity per message).
pub(crate) fn engine_error(e: &EngineError) -> Refusal {
    let (code, _) = wire(e.class());
    let message = match e {
        EngineError::Schema {
            collection,
            violation,
            ..
        } => format!("entity `{collection}`: {violation}"),
        // The engine names the field as `changes[i].field`: one change here.
        EngineError::Invalid(m) => m.strip_prefix("changes[0].").unwrap_or(m).to_string(),
        e => e.to_string(),
    };
    Refusal::new(code, message)
}

impl Unified {
    /// Connection `conn` of `client`, validating forms against `forms`,
    /// taking gzipped frames up to `max_frame_bytes` unpacked.
    pub fn new(
        client: Client,
        conn: u64,
        forms: Arc<crate::schema::SchemaSet>,
        max_frame_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Unified {
        Unified {
            metrics,
            forms,
            max_frame_bytes,
            client_id: client.client_id.unwrap_or_else(|| format!("c{conn}")),
            grant: client.grant,
            endpoint: client.endpoint,
            space: client.space,
            compress: client.compress,
            feeds: HashMap::new(),
            next_key: 0,
            pushes: HashMap::new(),
            next_token: 0,
        }
    }

    fn actor(&self) -> String {
        if self.grant.sub == "anonymous" {
            self.client_id.clone()
        } else {
            self.grant.sub.clone()
        }
    }

    fn error(&self, r: Refusal) -> String {
        self.metrics.errors_sent.fetch_add(1, Relaxed);
        proto::error(&r)
    }

    fn refused(&self, r: Refusal) -> Handled {
        Handled::reply(self.error(r))
    }

    fn handle(&mut self, text: &str) -> Handled {
        let msg = match proto::parse(text, self.endpoint) {
            Ok(m) => m,
            Err(r) => return self.refused(r),
        };
        let r = match msg {
            UnifiedMessage::Subscribe { entities } => self.subscribe(Kind::Entity, entities),
            UnifiedMessage::SubscribeFields { entities } => self.subscribe(Kind::Field, entities),
            UnifiedMessage::Sync { entity, since } => self.sync(entity, since),
            UnifiedMessage::Push {
                entity,
                entity_id,
                action,
                data,
            } => self.push(entity, entity_id, action, data),
            UnifiedMessage::PushFields {
                entity,
                entity_id,
                fields,
            } => self.push_fields(entity, entity_id, fields),
            UnifiedMessage::ValidateField {
                request_id,
                form,
                field,
                value,
            } => proto::validate_field(&self.forms, request_id, form, field, value)
                .map(|m| Handled::reply(proto::render(&m))),
            UnifiedMessage::ValidateForm {
                request_id,
                form,
                fields,
            } => proto::validate_form(&self.forms, request_id, form, fields)
                .map(|m| Handled::reply(proto::render(&m))),
            UnifiedMessage::Ping => Ok(Handled::reply(proto::render(&UnifiedMessage::Pong))),
            // `parse` refuses server-only messages before they get here.
            _ => Err(Refusal::new(
                code::SERVER_ONLY,
                "sent by the server, not to it",
            )),
        };
        r.unwrap_or_else(|refusal| self.refused(refusal))
    }

    fn check_entities(&self, entities: &[String]) -> Result<(), Refusal> {
        if !self.grant.can_read(&self.space) {
            return Err(Refusal::new(
                code::FORBIDDEN,
                "no read access to this space",
            ));
        }
        for e in entities {
            crate::engine::validate_name("entities", e)
                .map_err(|e| Refusal::new(code::INVALID_MESSAGE, e.to_string()))?;
        }
        Ok(())
    }

    fn subscribe(&mut self, kind: Kind, entities: Vec<String>) -> Result<Handled, Refusal> {
        self.check_entities(&entities)?;
        // Subscriptions accumulate; types already subscribed are skipped.
        let new: HashSet<String> = entities
            .into_iter()
            .filter(|e| {
                !self
                    .feeds
                    .values()
                    .any(|(k, set)| *k == kind && set.contains(e))
            })
            .collect();
        if new.is_empty() {
            return Ok(Handled::default());
        }
        self.next_key += 1;
        self.feeds.insert(self.next_key, (kind, new.clone()));
        Ok(Handled {
            follow: vec![Follow {
                key: self.next_key,
                space: self.space.clone(),
                filter: Filter {
                    collections: Some(new),
                    events: false,
                },
                since: Since::Now,
            }],
            ..Handled::default()
        })
    }

    /// `sync {entity, since}`: one `change` per entity of that type changed
    /// after per-type version `since`, at its newest version and with its
    /// whole current state, in version order; read from the per-type index,
    /// so the cost grows with the entities returned, not with the log.
    fn sync(&mut self, entity: String, since: i64) -> Result<Handled, Refusal> {
        self.check_entities(std::slice::from_ref(&entity))?;
        Ok(Handled {
            read: Some(Box::new(SyncRead {
                space: self.space.clone(),
                entity,
                after: u64::try_from(since).unwrap_or(0),
                done: false,
            })),
            ..Handled::default()
        })
    }

    fn can_write(&self) -> Result<(), Refusal> {
        if self.grant.can_write(&self.space) {
            Ok(())
        } else {
            Err(Refusal::new(
                code::FORBIDDEN,
                "no write access to this space",
            ))
        }
    }

    fn push(
        &mut self,
        entity: String,
        entity_id: String,
        action: proto::ChangeAction,
        data: Option<serde_json::Value>,
    ) -> Result<Handled, Refusal> {
        self.can_write()?;
        let write = proto::push_write(entity_id.clone(), entity.clone(), action, data)?;
        // Answered in request order once durable; the driver keeps serving.
        Ok(self.write(vec![write], Pushed::Entity { entity, entity_id }))
    }

    fn push_fields(
        &mut self,
        entity: String,
        entity_id: String,
        fields: Vec<proto::FieldUpdate>,
    ) -> Result<Handled, Refusal> {
        self.can_write()?;
        let (writes, times) = proto::field_writes(&entity, &entity_id, fields)?;
        let pushed = Pushed::Fields {
            entity,
            entity_id,
            times,
        };
        Ok(self.write(writes, pushed))
    }

    /// Writes as this client; `pushed` says what their result answers.
    fn write(&mut self, writes: Vec<crate::store::LocalWrite>, pushed: Pushed) -> Handled {
        self.next_token += 1;
        self.pushes.insert(self.next_token, pushed);
        let call = Call::Write {
            space: self.space.clone(),
            actor: self.actor(),
            writes,
            write_ids: Vec::new(),
        };
        Handled::call(self.next_token, call)
    }

    /// The answer of a push once its result is in.
    fn pushed(&self, pushed: Pushed, r: Result<Vec<Outcome>, EngineError>) -> Vec<String> {
        let outs = match r {
            Ok(outs) => outs,
            Err(e) => return vec![self.error(engine_error(&e))],
        };
        self.metrics.acks.fetch_add(1, Relaxed);
        match pushed {
            Pushed::Entity { entity, entity_id } => {
                let version = outs.first().map(|o| o.type_version).unwrap_or(0);
                vec![proto::render(&UnifiedMessage::PushAck {
                    entity,
                    entity_id,
                    version: i64::try_from(version).unwrap_or(i64::MAX),
                })]
            }
            Pushed::Fields {
                entity,
                entity_id,
                times,
            } => proto::field_push_reply(&entity, &entity_id, &times, &outs)
                .iter()
                .map(|m| proto::render_for(self.endpoint, m))
                .collect(),
        }
    }
}

impl Dialect for Unified {
    fn open(&mut self, _: u64) -> Handled {
        Handled::default()
    }

    fn on_text(&mut self, text: &str, _: u64) -> Handled {
        self.handle(text)
    }

    fn reply(&mut self, token: u64, reply: Reply, _: u64) -> Handled {
        match (self.pushes.remove(&token), reply) {
            (Some(pushed), Reply::Written(r)) => Handled {
                now: self.pushed(pushed, r),
                ..Handled::default()
            },
            _ => Handled::default(),
        }
    }

    /// A gzipped message (what RHTMX's clients send for 1 KiB and more):
    /// decompressed up to the frame limit; a client that compresses gets
    /// large frames compressed too.
    fn on_binary(&mut self, data: &[u8], _: u64) -> Handled {
        match crate::dialect::gzip::gunzip_text(data, self.max_frame_bytes) {
            Ok(t) => {
                self.compress = true;
                self.handle(&t)
            }
            Err(e) => {
                let c = match e {
                    crate::dialect::gzip::GzipError::TooLarge(_) => code::TOO_LARGE,
                    _ => code::BINARY,
                };
                self.refused(Refusal::new(c, format!("binary frame: {e}")))
            }
        }
    }

    fn refuse(&mut self, why: crate::dialect::Refusal, _: u64) -> String {
        use crate::dialect::Refusal as R;
        let c = match why {
            R::Binary => code::BINARY,
            R::TooLarge { .. } => code::TOO_LARGE,
            R::TooManyFeeds { .. } => code::TOO_MANY_SUBSCRIPTIONS,
        };
        self.error(Refusal::new(c, why.message()))
    }

    fn refuse_follow(&mut self, feed: u64, why: crate::dialect::Refusal, now_ms: u64) -> String {
        self.feeds.remove(&feed);
        self.refuse(why, now_ms)
    }

    /// An entity-level `change` carries the entity's whole state: known for
    /// live changes; for one re-read from the log (catch-up) the current
    /// state is read.
    /// A replayed change of an entity feed is rendered over the entity's
    /// current state (it carries no `after`).
    fn needs_state(&self, feed: u64, c: &Committed) -> bool {
        c.after.is_none() && matches!(self.feeds.get(&feed), Some((Kind::Entity, _)))
    }

    fn change(
        &mut self,
        feed: u64,
        c: &Committed,
        state: Option<&StoredEntity>,
        out: &mut Vec<Utf8Bytes>,
    ) {
        match self.feeds.get(&feed).map(|(k, _)| *k) {
            Some(Kind::Entity) if c.after.is_some() => out.push(proto::render_change(c)),
            Some(Kind::Entity) => {
                let now = state.map(|e| e.view());
                let change = proto::change_log_over(c, now.as_ref());
                out.push(proto::render(&UnifiedMessage::Change { change }).into());
            }
            Some(Kind::Field) => out.extend(proto::render_field_changes(c)),
            None => {}
        }
    }

    fn snapshot(
        &mut self,
        feed: u64,
        collection: &str,
        id: &str,
        e: &StoredEntity,
        _: u64,
        out: &mut Vec<Utf8Bytes>,
    ) {
        let Some((kind, _)) = self.feeds.get(&feed) else {
            return;
        };
        match kind {
            Kind::Entity => out.push(
                proto::render(&UnifiedMessage::Change {
                    change: proto::snapshot_change(collection, id, e),
                })
                .into(),
            ),
            Kind::Field => out.extend(
                proto::snapshot_fields(collection, id, e)
                    .into_iter()
                    .map(|change| proto::render(&UnifiedMessage::FieldChange { change }).into()),
            ),
        }
    }

    fn feed_failed(&mut self, feed: u64, e: &EngineError) -> Failed {
        self.feeds.remove(&feed);
        Failed::Answer(vec![proto::error(&engine_error(e))])
    }

    fn read_failed(&mut self, e: &EngineError) -> Failed {
        Failed::Answer(vec![proto::error(&engine_error(e))])
    }

    /// One frame to the client: as text, or gzipped in a binary frame when
    /// the client compresses and the frame is at least `gzip::THRESHOLD`
    /// bytes.
    fn outgoing(&self, frame: Utf8Bytes) -> Message {
        if self.compress && frame.len() >= crate::dialect::gzip::THRESHOLD {
            let zipped = crate::dialect::gzip::gzip(frame.as_str());
            return Message::Binary(zipped.into());
        }
        Message::Text(frame)
    }
}

/// The paged read of `sync`: [`PAGE`] entities per page, in version order.
struct SyncRead {
    space: String,
    entity: String,
    after: u64,
    done: bool,
}

impl Read for SyncRead {
    fn query(&mut self) -> Option<Query> {
        (!self.done).then(|| sync_query(&self.space, &self.entity, self.after, PAGE))
    }

    fn rows(&mut self, rows: Rows) -> Vec<String> {
        let (_, page) = sync_changes(&self.entity, rows);
        self.done = page.len() < PAGE;
        let mut frames = Vec::with_capacity(page.len());
        for change in page {
            self.after = u64::try_from(change.version).unwrap_or(self.after);
            frames.push(proto::render(&UnifiedMessage::Change { change }));
        }
        frames
    }
}

/// The read of one page of `sync` (and of the HTTP sync API): up to
/// `limit` entities of `entity` changed after per-type version `after`.
pub(crate) fn sync_query(space: &str, entity: &str, after: u64, limit: usize) -> Query {
    Query::TypeChanges {
        space: space.into(),
        collection: entity.into(),
        after,
        limit,
    }
}

/// A [`sync_query`]'s rows as `ChangeLog`s, with the type's latest
/// version (other rows: none).
pub(crate) fn sync_changes(entity: &str, rows: Rows) -> (u64, Vec<proto::ChangeLog>) {
    let Rows::TypeChanges { latest, items } = rows else {
        return (0, Vec::new());
    };
    let changes = items
        .iter()
        .map(|(id, e, newest)| proto::entity_change(entity, id, e, newest.as_ref()))
        .collect();
    (latest, changes)
}

/// One page of `sync` read now (blocking: callers run it off the async
/// workers).
pub(crate) fn proto_sync_page(
    engine: &crate::engine::Engine,
    space: &str,
    entity: &str,
    after: u64,
    limit: usize,
) -> Result<(u64, Vec<proto::ChangeLog>), EngineError> {
    let rows = sync_query(space, entity, after, limit).run(engine)?;
    Ok(sync_changes(entity, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One engine error of each kind -> its `error` code on the sockets
    /// and its status on the HTTP API; messages name one entity.
    #[test]
    fn engine_errors_map_through_one_table() {
        let got: Vec<(&str, u16)> = EngineError::samples()
            .iter()
            .map(|e| {
                let (code, status) = wire(e.class());
                assert_eq!(engine_error(e).code, code);
                (code, status.as_u16())
            })
            .collect();
        assert_eq!(
            got,
            [
                (code::INVALID_FIELD, 400),
                (code::SCHEMA_VIOLATION, 400),
                (code::STORAGE_FAILED, 500),
                (code::DISK_FULL, 507),
                (code::DISK_FULL, 507),
                (code::UNAVAILABLE, 503),
                (code::UNAVAILABLE, 503),
                (code::UNAVAILABLE, 503),
                (code::STORAGE_FAILED, 500),
                (code::STORAGE_FAILED, 500),
            ]
        );
        let samples = EngineError::samples();
        assert_eq!(engine_error(&samples[0]).message, "id: empty");
        assert_eq!(
            engine_error(&samples[1]).message,
            "entity `c`: field `f` breaks rule `required`: \"f\" is a required property"
        );
    }
}
